"""Parse time of model outputs against their length: adversarial outputs (an unclosed <think> as a model
that hits its token limit writes it, runs of tags, endless numbers) next to a well-formed one. Goal: linear,
so a 100 KB output costs about 100 x a 1 KB one and never holds the server's GIL for long.

    .venv/bin/python Testing/Benchmarks/bench_parser.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from test_actions import ADVERSARIAL, parse_seconds

SIZES = (1_000, 10_000, 100_000, 1_000_000)
CASES = {
    **ADVERSARIAL,
    "well-formed, long think": lambda n: f"<think>{'x' * n}</think><action>Positive Point (0.5000, 0.2500)</action>",
}


def main() -> None:
    print(f"{'output':34s}" + "".join(f"{size:>12,d} B" for size in SIZES) + "   1 MB / 1 KB")
    for name, make in CASES.items():
        times = [parse_seconds(make(size)) for size in SIZES]
        print(f"{name:34s}" + "".join(f"{t * 1e3:11.3f} ms" for t in times) + f"   {times[-1] / times[0]:9.0f}x")


if __name__ == "__main__":
    main()
