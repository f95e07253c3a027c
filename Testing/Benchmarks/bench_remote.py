"""Remote backend costs on loopback: per-step overhead vs in-process, bytes per click, volume upload,
and step latency with 16 concurrent clients. Real-size MedSAM2 (random weights), replayed model outputs.

Goals (DESIGN.md section 7): per-step overhead <= 15 ms beyond in-process, click requests <= 2 KB,
a 512 x 512 x 300 int16 volume uploaded in <= 1.5 s.

    .venv/bin/python Testing/Benchmarks/bench_remote.py [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from server_process import ServerProcess

from IBISAgentLib.agent.session import AgentSession
from IBISAgentLib.models.devices import resolve_device
from IBISAgentLib.models.tiny_models import _build_random_medsam2
from IBISAgentLib.policies import ReplayPolicy
from IBISAgentLib.remote.client import RemoteBackend
from IBISAgentLib.remote.protocol import UploadedImage
from IBISAgentLib.tools.click_tool import SAM2Tool

TURNS = 20


def outputs() -> list[str]:
    points = np.random.default_rng(0).uniform(0.05, 0.95, (TURNS, 2))
    return [f"<think>{i}</think><action>Positive Point ({x:.4f}, {y:.4f})</action>" for i, (x, y) in enumerate(points)]


def step_times(session) -> tuple[list[float], list[float]]:
    """Wall time of each step as the caller sees it, and the session's own time for it (policy + tool + loop)."""
    walls, inside = [], []
    for _ in range(TURNS):
        started = time.perf_counter()
        step = session.step()
        walls.append((time.perf_counter() - started) * 1e3)
        inside.append(sum(step.timings_ms.values()))
    return walls[1:], inside[1:]  # the first step computes the image embedding


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto: the same for in-process and server")
    device = resolve_device(parser.parse_args().device)
    image = np.random.default_rng(1).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(folder) / "medsam2.pt"
        _build_random_medsam2(checkpoint)
        replay = Path(folder) / "outputs.json"
        replay.write_text(json.dumps(outputs()))

        local = AgentSession(image, "x", ReplayPolicy(outputs()), SAM2Tool(checkpoint, device=device))
        local_ms, _ = step_times(local)

        with ServerProcess(
            "--mllm",
            f"replay:{replay}",
            "--sam2",
            str(checkpoint),
            "--max-upload-mb",
            "1024",
            "--max-sessions",
            "64",
            device=device,
        ) as server:
            backend = RemoteBackend(server.url, token=server.token)
            remote = backend.open_session(image, "x")
            remote_ms, server_ms = step_times(remote)

            sizes = []
            backend.http.hooks["response"].append(
                lambda r, *a, **k: sizes.append(
                    len(r.request.body or b"") + sum(len(k) + len(v) + 4 for k, v in r.request.headers.items())
                )
            )
            remote.add_click(100, 200, positive=False)
            click_bytes = sizes[-1]

            volume = np.random.default_rng(2).integers(-1000, 2000, (300, 512, 512), dtype=np.int16)
            started = time.perf_counter()
            backend.upload(UploadedImage("volume", volume))
            upload_s = time.perf_counter() - started

            latencies: list[float] = []
            lock = threading.Lock()

            def client(seed: int) -> None:
                own = RemoteBackend(server.url, token=server.token)
                picture = np.random.default_rng(seed).integers(0, 256, (512, 512, 3), dtype=np.uint8)
                session = own.open_session(picture, f"client {seed}")
                for _ in range(10):
                    started = time.perf_counter()
                    session.step()
                    with lock:
                        latencies.append((time.perf_counter() - started) * 1e3)

            threads = [threading.Thread(target=client, args=(seed,)) for seed in range(16)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

    local_p50, remote_p50 = statistics.median(local_ms), statistics.median(remote_ms)
    print(f"device: {device}")
    print("| measure | value | goal |")
    print("|---|---:|---|")
    print(f"| in-process step, p50 | {local_p50:.1f} ms | |")
    print(f"| remote step, p50 | {remote_p50:.1f} ms | |")
    server_p50 = statistics.median(server_ms)
    print(f"| remote overhead per step (p50 difference) | {remote_p50 - local_p50:.1f} ms | <= 15 ms |")
    print(f"| of which the session's own step time on the server, p50 | {server_p50:.1f} ms | |")
    print(f"| protocol cost per step (remote wall - server step time), p50 | {remote_p50 - server_p50:.1f} ms | |")
    print(f"| click request, body + headers | {click_bytes} B | <= 2048 B |")
    print(f"| upload of 512x512x300 int16 ({volume.nbytes / 2**20:.0f} MiB) | {upload_s:.2f} s | <= 1.5 s |")
    p95 = float(np.percentile(latencies, 95))
    print(f"| 16 clients x 10 steps: p50 / p95 step latency | {statistics.median(latencies):.0f} / {p95:.0f} ms | |")


if __name__ == "__main__":
    main()
