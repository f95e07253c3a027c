"""Propagation per-slice time and peak memory at 512 x 512, ours vs sam2's stock video predictor.

Real-size MedSAM2 with random weights (the released weights cost the same compute). The stock
predictor is fed the same frames all at once, as its own loader would prepare them (every slice
resized and normalized up front); ours renders each slice when the predictor asks and drops per-frame
memories it can no longer use. Each run is a fresh process so peak RSS is its own.
Goals (DESIGN.md section 7): our peak memory grows <= 1.2x from 64 to 256 slices; per-slice time
<= 1.05x the stock predictor's. On a GPU both run under bfloat16 autocast, as sam2's own demos do, the
stock predictor with all frames on the GPU (its default), and peak GPU memory is reported too.
Each process propagates 8 slices once before the timed run.

    .venv/bin/python Testing/Benchmarks/bench_propagation.py [--slices 64 128 256] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def worker(mode: str, slices: int, checkpoint: str, device: str) -> dict[str, float]:
    import contextlib

    import SimpleITK as sitk
    import torch

    from IBISAgentLib.imaging.geometry import SliceGeometry
    from IBISAgentLib.tools.propagation import PropagationOptions, SAM2Propagator, in_memory_state

    propagator = SAM2Propagator(checkpoint, device=device)
    on_gpu = device.startswith("cuda")
    mask = np.zeros((512, 512), bool)
    mask[200:300, 180:320] = True

    def run(volume: np.ndarray) -> int:
        """Propagate through the whole volume from its middle slice; the number of slices segmented."""
        count = len(volume)
        key = SliceGeometry.of(sitk.Image([512, 512, count], sitk.sitkUInt8), "axial", count // 2)
        if mode == "ours":
            return len(propagator.propagate(volume, key, mask, PropagationOptions(stop_after_empty=0)).visited)
        predictor = propagator.predictor
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if on_gpu else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            frames = torch.stack(
                [propagator.transforms(np.repeat(volume[k][:, :, None], 3, axis=2)) for k in range(count)]
            ).to(device)
            state = in_memory_state(predictor, frames, 512, 512)
            result = np.zeros(volume.shape, bool)
            visited = 0
            for reverse in (False, True):
                predictor.reset_state(state)
                predictor.add_new_mask(state, frame_idx=key.index, obj_id=1, mask=mask)
                for frame, _, logits in predictor.propagate_in_video(state, start_frame_idx=key.index, reverse=reverse):
                    result[frame] |= (logits[0, 0] > 0).cpu().numpy()
                    visited += 1
        return visited - 1  # the key slice is yielded by both directions

    rng = np.random.default_rng(0)
    # A short run first, as a clinician's session has had by its second propagation: kernel
    # selection and allocator warm-up are not per-slice costs.
    run(rng.integers(0, 256, (8, 512, 512), dtype=np.uint8))
    volume = rng.integers(0, 256, (slices, 512, 512), dtype=np.uint8)
    started = time.perf_counter()
    visited = run(volume)
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if on_gpu else 0.0
    return {
        "seconds": seconds,
        "per_slice": seconds / visited,
        "peak_mb": peak_mb,
        "gpu_mb": gpu_mb,
        "visited": visited,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--worker", nargs=3, metavar=("MODE", "SLICES", "CHECKPOINT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    from IBISAgentLib.models.devices import resolve_device

    device = resolve_device(args.device)
    if args.worker:
        mode, slices, checkpoint = args.worker
        print(json.dumps(worker(mode, int(slices), checkpoint, device)))
        return

    from IBISAgentLib.models.tiny_models import _build_random_medsam2

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(folder) / "medsam2.pt"
        _build_random_medsam2(checkpoint)
        for slices in args.slices:
            for mode in ("stock", "ours"):
                output = subprocess.run(
                    [sys.executable, __file__, "--device", device, "--worker", mode, str(slices), str(checkpoint)],
                    capture_output=True, text=True, check=True,
                ).stdout  # fmt: skip
                rows.append((slices, mode, json.loads(output.strip().splitlines()[-1])))
                print(f"done: {slices} slices, {mode}", file=sys.stderr, flush=True)
    print(f"device: {device}")
    print("| slices | predictor | per-slice s | total s | peak RSS MB | peak GPU MB |")
    print("|-------:|-----------|------------:|--------:|------------:|------------:|")
    for slices, mode, r in rows:
        memory = f"{r['peak_mb']:.0f} | {r['gpu_mb']:.0f}"
        print(f"| {slices} | {mode} | {r['per_slice']:.3f} | {r['seconds']:.1f} | {memory} |")
    ours = {s: r for s, m, r in rows if m == "ours"}
    stock = {s: r for s, m, r in rows if m == "stock"}
    smallest, largest = min(ours), max(ours)
    for memory in ("peak_mb", "gpu_mb") if device.startswith("cuda") else ("peak_mb",):
        growth = ours[largest][memory] / ours[smallest][memory]
        print(f"our {memory.replace('_mb', '')} memory {largest} vs {smallest} slices: {growth:.2f}x")
    for s in sorted(ours):
        print(f"per-slice time ours / stock at {s} slices: {ours[s]['per_slice'] / stock[s]['per_slice']:.3f}x")


if __name__ == "__main__":
    main()
