"""Server memory under bursts of clients with new images: resident size after each burst and after its
sessions and images expire, against the post-warm-up baseline. Real-size MedSAM2 (random weights), replayed
model outputs; each client uploads its own CT-sized volume, works on a slice and leaves (half close their
session, half just go away and leave it to expire). Goal (DESIGN.md section 7): back within 5 % of the
baseline once everything expired.

    .venv/bin/python Testing/Benchmarks/bench_server_soak.py [--bursts 4] [--clients 8] [--slices 100]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from server_process import ServerProcess

from IBISAgentLib.imaging.volume_case import VolumeCase
from IBISAgentLib.models.tiny_models import build_random_segmenter
from IBISAgentLib.remote.client import RemoteBackend
from IBISAgentLib.tools import MEDSAM2

IDLE_TIMEOUT = 4.0
OUTPUTS = [f"<think>{i}</think><action>Positive Point (0.{40 + i}00, 0.5000)</action>" for i in range(3)]


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text(encoding="utf-8").splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for process {pid}")


def burst(url: str, token: str, clients: int, slices: int, seed: int) -> None:
    def client(index: int) -> None:
        volume = np.random.default_rng(seed * 1000 + index).integers(-1000, 1500, (slices, 512, 512), dtype=np.int16)
        image = sitk.GetImageFromArray(volume)
        session = RemoteBackend(url, token=token).open_session(VolumeCase.of(image, None, None), "x", max_turns=3)
        session.run()
        if index % 2 == 0:
            session.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def wait_for_expiry(url: str, token: str) -> None:
    backend = RemoteBackend(url, token=token)
    while backend.request("GET", "/v1/capabilities").json()["sessions_open"]:
        time.sleep(0.5)
    time.sleep(IDLE_TIMEOUT + 2)  # the images follow their sessions one idle timeout later


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bursts", type=int, default=4)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--slices", type=int, default=100, help="slices of each client's 512 x 512 int16 volume")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(folder) / "medsam2.pt"
        build_random_segmenter(checkpoint, MEDSAM2)
        replay = Path(folder) / "outputs.json"
        replay.write_text(json.dumps(OUTPUTS * 1000))
        with ServerProcess("--mllm", f"replay:{replay}", "--sam2", str(checkpoint), "--idle-timeout",
                           str(IDLE_TIMEOUT), "--max-sessions", "64") as server:  # fmt: skip
            pid = server.process.pid
            print(f"server started: {rss_mb(pid):.0f} MB")
            burst(server.url, server.token, args.clients, args.slices, seed=0)
            wait_for_expiry(server.url, server.token)
            baseline = rss_mb(pid)
            volume_mb = args.slices * 512 * 512 * 2 / 2**20
            print(f"baseline after a warm-up burst and its expiry: {baseline:.0f} MB")
            print(f"\n{args.clients} clients a burst, each uploading a {volume_mb:.0f} MiB volume\n")
            print("| burst | RSS after burst | RSS after expiry | vs baseline | peak so far |")
            print("|---:|---:|---:|---:|---:|")
            for index in range(1, args.bursts + 1):
                burst(server.url, server.token, args.clients, args.slices, seed=index)
                after = rss_mb(pid)
                wait_for_expiry(server.url, server.token)
                expired = rss_mb(pid)
                print(f"| {index} | {after:.0f} MB | {expired:.0f} MB | {100 * (expired / baseline - 1):+.1f} % | "
                      f"{rss_mb(pid, 'VmHWM'):.0f} MB |")  # fmt: skip


if __name__ == "__main__":
    main()
