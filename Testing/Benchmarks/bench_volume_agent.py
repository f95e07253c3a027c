"""The volume agent's cost: slices inspected and model calls of the key-slice search, and wall time of the search
and of the check, per volume size, with a policy of fixed latency at 1 and 8 concurrent sessions.

The policy is the oracle (it answers from a reference labelmap) plus a fixed sleep per call, standing for a model
served behind an OpenAI-compatible endpoint, which answers concurrent requests in parallel; the segmenter is the
weight-free one. Volumes are phantoms of 128 x 128 slices with a lesion through the middle third, and a test-double
propagator that leaks into a neighbouring organ from a few slices past the key, so the check has work to do.

    .venv/bin/python Testing/Benchmarks/bench_volume_agent.py [--slices 64 128 300] [--latency 0.5] [--workers 1 8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from volume_data import LeakyPropagator

from IBISAgentLib.agent.backends import LocalBackend
from IBISAgentLib.agent.volume_agent import check_propagation, search_key_slice
from IBISAgentLib.imaging.volume_case import VolumeCase
from IBISAgentLib.tools import PropagationOptions
from IBISAgentLib.tools.classical import CLASSICAL
from IBISAgentLib.training.oracle import ReferenceOracle


class SlowOracle:
    """The oracle answering after ``latency`` seconds, counting its calls (thread-safe, as an endpoint is)."""

    def __init__(self, reference: Path, latency: float) -> None:
        self.oracle, self.latency = ReferenceOracle(reference), latency
        self.description = "oracle with a fixed latency"
        self.calls = 0
        self._lock = threading.Lock()

    def generate(self, request, cancel):
        with self._lock:
            self.calls += 1
        time.sleep(self.latency)
        return self.oracle.generate(request, cancel)


def phantom(folder: Path, depth: int) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    k, j, i = np.mgrid[0:depth, 0:128, 0:128]
    centre, reach = depth / 2, depth / 6
    lesion = ((k - centre) / reach) ** 2 + ((j - 60) / 24.0) ** 2 + ((i - 52) / 24.0) ** 2 <= 1
    neighbour = ((k - centre) / (reach * 1.3)) ** 2 + ((j - 60) / 20.0) ** 2 + ((i - 100) / 12.0) ** 2 <= 1
    voxels = np.full(lesion.shape, -100.0)
    voxels[lesion], voxels[neighbour] = 120, 140
    voxels += np.random.default_rng(0).normal(0, 8, voxels.shape)
    image = sitk.GetImageFromArray(voxels.astype(np.int16))
    reference = sitk.GetImageFromArray(lesion.astype(np.uint8))
    reference.CopyInformation(image)
    sitk.WriteImage(image, str(folder / f"v{depth}.nii.gz"))
    sitk.WriteImage(reference, str(folder / f"r{depth}.nii.gz"))
    return folder / f"v{depth}.nii.gz", folder / f"r{depth}.nii.gz", lesion, neighbour


def run(depth: int, latency: float, workers: int, folder: Path) -> dict[str, float]:
    volume, reference, lesion, neighbour = phantom(folder, depth)
    policy = SlowOracle(reference, latency)
    backend = LocalBackend(lambda: policy, CLASSICAL.tool())
    threaded = backend.for_threads()
    case = VolumeCase.load(volume, "axial")
    prompt = "segment the lesion"
    started = time.perf_counter()
    found = search_key_slice(lambda c: threaded.open_session(c, prompt, max_turns=1), case, workers=workers)
    search_s, search_calls = time.perf_counter() - started, policy.calls
    key_case = case.at(found.key)
    backend._propagator = LeakyPropagator(neighbour, found.key + 3)
    session = backend.open_session(key_case, prompt)
    session.run()
    options = PropagationOptions(stop_after_empty=0)
    before = backend.propagate_with_keys(session, options)
    calls = policy.calls
    started = time.perf_counter()
    after, checks, _ = check_propagation(
        lambda extra: backend.propagate_with_keys(session, options, extra_keys=extra),
        lambda c, mask: threaded.open_session(c, prompt, initial_mask=mask),
        key_case, before, [], workers=workers,
    )  # fmt: skip
    check_s = time.perf_counter() - started

    def dice(mask: np.ndarray) -> float:
        return 2 * np.count_nonzero(mask & lesion) / (np.count_nonzero(mask) + np.count_nonzero(lesion))

    return {
        "inspected": len(found.records), "search calls": search_calls, "search s": search_s,
        "checked": len(checks), "check calls": policy.calls - calls, "check s": check_s,
        "dice before": dice(before.mask), "dice after": dice(after.mask),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, nargs="+", default=[64, 128, 300])
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()
    print(f"policy latency {args.latency} s a call; weight-free segmenter; 128 x 128 slices")
    print("| slices | workers | inspected | search calls | search s | re-checked | check calls | check s | "
          "Dice before -> after check |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as folder:
        for depth in args.slices:
            for workers in args.workers:
                r = run(depth, args.latency, workers, Path(folder))
                print(f"| {depth} | {workers} | {r['inspected']} | {r['search calls']} | {r['search s']:.1f} | "
                      f"{r['checked']} | {r['check calls']} | {r['check s']:.1f} | "
                      f"{r['dice before']:.3f} -> {r['dice after']:.3f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
