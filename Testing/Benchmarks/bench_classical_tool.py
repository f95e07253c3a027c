"""Time per click of the weight-free random-walker tool on 512 x 512 slices (goal: under 0.5 s on our
2-core machines), over an oracle-driven session on a real MR slice resized to 512 and a synthetic one.

    .venv/bin/python Testing/Benchmarks/bench_classical_tool.py
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from volume_data import mni_path

from IBISAgentLib.agent.session import AgentSession
from IBISAgentLib.imaging.rendering import to_rgb_uint8
from IBISAgentLib.imaging.volume_case import VolumeCase
from IBISAgentLib.tools.classical import RandomWalkerTool
from IBISAgentLib.training.oracle import OraclePolicy, iou


def real_slice() -> tuple[np.ndarray, np.ndarray]:
    case = VolumeCase.load(mni_path("t1"), "axial:100")
    truth = case.geometry.extract(sitk.GetArrayFromImage(sitk.ReadImage(str(mni_path("wm"))))) > 128
    image = np.asarray(Image.fromarray(case.slice_rgb()).resize((512, 512), Image.Resampling.BILINEAR))
    mask = np.asarray(Image.fromarray(truth.astype(np.uint8) * 255).resize((512, 512), Image.Resampling.NEAREST)) > 0
    return image, mask


def synthetic_slice() -> tuple[np.ndarray, np.ndarray]:
    rows, columns = np.ogrid[:512, :512]
    truth = (rows - 250) ** 2 / 120**2 + (columns - 260) ** 2 / 90**2 <= 1
    noise = np.random.default_rng(0).normal(0, 20, (512, 512))
    image = np.clip(np.where(truth, 170, 70) + noise, 0, 255).astype(np.uint8)
    return to_rgb_uint8(image), truth


def main() -> None:
    print("| slice | clicks | mean s | p95 s | max s | final IoU |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (image, truth) in (("MNI T1 white matter", real_slice()), ("synthetic ellipse", synthetic_slice())):
        session = AgentSession(image, "x", OraclePolicy(truth), RandomWalkerTool(), max_turns=20)
        trace = session.run()
        seconds = [s.timings_ms["tool"] / 1e3 for s in trace.steps if s.pixel is not None]
        p95 = float(np.percentile(seconds, 95))
        print(
            f"| {name} | {len(seconds)} | {statistics.fmean(seconds):.3f} | {p95:.3f} | {max(seconds):.3f} "
            f"| {iou(truth, session.mask):.3f} |"
        )


if __name__ == "__main__":
    main()
