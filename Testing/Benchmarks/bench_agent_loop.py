"""Per-turn time of the agent loop: policy / tool predict / loop overhead, at 512 x 512.

Real-size MedSAM2 (random weights: same compute as the released ones) and the replay policy, 20 turns.
Goal (DESIGN.md section 7): loop overhead <= 5% of the tool's predict time, no file I/O per turn,
exactly one image embedding per image.

    .venv/bin/python Testing/Benchmarks/bench_agent_loop.py [--turns 20] [--device auto]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from IBISAgentLib.agent.session import AgentSession
from IBISAgentLib.models.tiny_models import _build_random_medsam2
from IBISAgentLib.policies import ReplayPolicy
from IBISAgentLib.tools.click_tool import SAM2Tool


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
    points = rng.uniform(0.05, 0.95, (args.turns, 2))
    outputs = [
        f"<think>turn {i}</think><action>{'Positive' if i % 3 else 'Negative'} Point ({x:.4f}, {y:.4f})</action>"
        for i, (x, y) in enumerate(points)
    ]
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(folder) / "medsam2.pt"
        _build_random_medsam2(checkpoint)
        tool = SAM2Tool(checkpoint, device=args.device)

    opened: list[str] = []
    counting = [False]
    sys.addaudithook(lambda event, a: opened.append(a[0]) if counting[0] and event == "open" else None)
    session = AgentSession(image, "segment the target", ReplayPolicy(outputs), tool, max_turns=args.turns)
    counting[0] = True
    started = time.perf_counter()
    trace = session.run()
    wall = time.perf_counter() - started
    counting[0] = False

    steps = trace.steps
    embed_turn, rest = steps[0], steps[1:]
    table = [
        ("policy (replay)", [s.timings_ms["policy"] for s in rest]),
        ("tool predict", [s.timings_ms["tool"] for s in rest]),
        ("loop overhead", [s.timings_ms["loop"] for s in rest]),
    ]
    print(f"agent loop, {args.size}x{args.size}, {len(steps)} turns, device {tool.device}, stop: {trace.stop_reason}")
    print(f"| {'part':<18} | {'mean ms':>8} | {'p50 ms':>8} | {'p95 ms':>8} |")
    print(f"|{'-' * 20}|{'-' * 10}|{'-' * 10}|{'-' * 10}|")
    for name, values in table:
        p95 = float(np.percentile(values, 95))
        print(f"| {name:<18} | {statistics.mean(values):8.3f} | {statistics.median(values):8.3f} | {p95:8.3f} |")
    loop = statistics.mean(table[2][1])
    predict = statistics.mean(table[1][1])
    print(f"first turn tool time (embedding + predict): {embed_turn.timings_ms['tool']:.1f} ms")
    print(f"loop overhead / predict: {100 * loop / predict:.2f} %   (goal <= 5 %)")
    print(f"image embeddings computed: {tool.embeddings_computed}   (goal 1)")
    print(f"files opened during the run: {len(opened)}   (goal 0)")
    print(f"wall time of the run: {wall:.2f} s")


if __name__ == "__main__":
    main()
