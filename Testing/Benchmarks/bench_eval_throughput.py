"""Evaluation throughput (sessions per minute) with 1, 4 and 16 workers against an OpenAI-compatible
endpoint that takes a fixed time per request: the project's fake server standing in for vLLM, which
answers concurrent requests in about the time of one. Real-size MedSAM2 (random weights) as the click
tool, shared by the workers; every session makes the same number of requests.

    .venv/bin/python Testing/Benchmarks/bench_eval_throughput.py [--sessions 32] [--latency 0.5] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fake_openai_server import FakeOpenAIServer

from IBISAgentLib.models.loading import load_policy_factory
from IBISAgentLib.models.tiny_models import _build_random_medsam2
from IBISAgentLib.tools.click_tool import SAM2Tool
from IBISAgentLib.training.evaluation import evaluate
from IBISAgentLib.training.manifest import load_sample, read_manifest

TURNS = 4


def write_dataset(folder: Path, sessions: int) -> Path:
    """Distinct 512 x 512 slices with a bright disc each (every session computes its own embedding)."""
    rng = np.random.default_rng(0)
    rows = []
    for index in range(sessions):
        image = rng.integers(0, 60, (512, 512), dtype=np.uint8)
        j, i = np.ogrid[:512, :512]
        disc = (j - rng.integers(150, 350)) ** 2 + (i - rng.integers(150, 350)) ** 2 < 60**2
        image[disc] = 200
        Image.fromarray(image).save(folder / f"{index}.png")
        Image.fromarray((disc * 255).astype(np.uint8)).save(folder / f"{index}_mask.png")
        rows.append({"id": str(index), "image": f"{index}.png", "mask": f"{index}_mask.png", "target": "disc"})
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return manifest


def click(body: dict) -> tuple[int, str]:
    """Always a click, so every session runs exactly TURNS turns (the max-turns rule stops it)."""
    x, y = np.random.default_rng(len(json.dumps(body))).uniform(0.3, 0.7, 2)
    return 200, f"<think>The disc.</think><action>Positive Point ({x:.3f}, {y:.3f})</action>"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=32)
    parser.add_argument("--latency", type=float, default=0.5, help="seconds the endpoint takes per request")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        records = read_manifest(write_dataset(folder, args.sessions))
        _build_random_medsam2(folder / "medsam2.pt")
        tool = SAM2Tool(folder / "medsam2.pt", device=args.device, cached_images=16)
        rows = []
        with FakeOpenAIServer(respond=click, latency=args.latency) as server:
            for workers in (1, 4, 16):
                factory = load_policy_factory(server.url, workers=workers)
                policy_for = lambda sample, make=factory: make()  # noqa: E731
                started = time.perf_counter()
                report = evaluate(records, load_sample, policy_for, tool, folder / f"report{workers}",
                                  max_turns=TURNS, workers=workers)  # fmt: skip
                seconds = time.perf_counter() - started
                assert report["summary"]["turns"] == TURNS
                rows.append((workers, seconds, args.sessions / seconds * 60))
    floor = args.sessions * TURNS * args.latency
    print(f"\n{args.sessions} sessions x {TURNS} requests, {args.latency} s a request ({floor:.0f} s one at a time)")
    print("| workers | seconds | sessions / min | speed-up |\n|---:|---:|---:|---:|")
    for workers, seconds, rate in rows:
        print(f"| {workers} | {seconds:.1f} | {rate:.1f} | {rows[0][1] / seconds:.1f}x |")


if __name__ == "__main__":
    main()
