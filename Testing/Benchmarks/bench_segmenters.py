"""Per SAM 2 family variant (random weights, real size): image embedding (set_image), one click (predict)
and propagation per slice, on 512 x 512 slices.

    .venv/bin/python Testing/Benchmarks/bench_segmenters.py [--variants medsam2 sam2-hiera-l ...] [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from IBISAgentLib.agent.interfaces import Click
from IBISAgentLib.imaging.geometry import SliceGeometry
from IBISAgentLib.models.devices import resolve_device
from IBISAgentLib.tools import PropagationOptions, SegmenterSpec, variant_named

DEFAULT = ("medsam2", "sam2-hiera-t", "sam2-hiera-s", "sam2-hiera-b+", "sam2-hiera-l")
SIDE = 512


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def measure(name: str, device: str, slices: int) -> tuple[float, float, float]:
    spec = SegmenterSpec(variant_named(name), None)
    rng = np.random.default_rng(0)
    tool = spec.tool(device)
    embeddings = []
    for seed in range(3):
        image = rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
        started = time.perf_counter()
        tool.set_image(image, key=f"image-{seed}")
        synchronize(device)
        embeddings.append(time.perf_counter() - started)
    clicks, logits = [], None
    for n in range(10):
        started = time.perf_counter()
        result = tool.predict([Click(100 + 20 * n, 200, n % 3 != 2)], logits)
        synchronize(device)
        clicks.append(time.perf_counter() - started)
        logits = result.logits
    del tool
    propagator = spec.propagator(device)
    volume = rng.integers(0, 256, (slices, SIDE, SIDE), dtype=np.uint8)
    key = SliceGeometry.of(sitk.Image([SIDE, SIDE, slices], sitk.sitkUInt8), "axial", 0)
    mask = np.zeros((SIDE, SIDE), bool)
    mask[200:300, 200:300] = True
    warm_up = PropagationOptions(last=1, stop_after_empty=0)  # the first slices pay set-up
    propagator.propagate(volume, key, mask, warm_up)
    started = time.perf_counter()
    propagator.propagate(volume, key, mask, PropagationOptions(stop_after_empty=0))
    synchronize(device)
    per_slice = (time.perf_counter() - started) / slices
    return statistics.median(embeddings[1:]), statistics.median(clicks[1:]), per_slice


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT))
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = resolve_device(args.device)
    print(f"device: {device}; {SIDE} x {SIDE} slices, random weights; propagation over {args.slices} slices")
    print("| variant | image size | set_image | predict (one click) | propagation per slice |")
    print("|---|---:|---:|---:|---:|")
    for name in args.variants:
        embed, click, per_slice = measure(name, device, args.slices)
        size = variant_named(name).image_size
        print(f"| {name} | {size} | {embed:.2f} s | {click * 1e3:.0f} ms | {per_slice:.2f} s |", flush=True)


if __name__ == "__main__":
    main()
