"""The evaluation harness: per-sample overlap (SimpleITK's label overlap filter), turns, stop reason and
time; NoC@85 / NoC@90 for click policies; tables per modality and overall. Resumable: every finished
sample is appended to ``results.jsonl`` and skipped on the next run."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..interfaces import Policy, SegmentationTool
from ..session import AgentSession
from .manifest import Sample
from .oracle import iou

NOC_THRESHOLDS = (0.85, 0.90)
NOC_CAP = 20  # clicks counted for a sample that never reaches the threshold, as in the literature


def overlap(truth: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """IoU, Dice and F1 (from precision and recall) of one binary mask."""
    if not truth.any() and not mask.any():
        return {"iou": 1.0, "dice": 1.0, "f1": 1.0}
    if not truth.any() or not mask.any():
        return {"iou": 0.0, "dice": 0.0, "f1": 0.0}
    measures = sitk.LabelOverlapMeasuresImageFilter()
    measures.Execute(sitk.GetImageFromArray(truth.astype(np.uint8)), sitk.GetImageFromArray(mask.astype(np.uint8)))
    precision = 1.0 - measures.GetFalsePositiveError()
    recall = 1.0 - measures.GetFalseNegativeError()
    f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return {"iou": measures.GetJaccardCoefficient(), "dice": measures.GetDiceCoefficient(), "f1": f1}


def clicks_to_reach(ious: list[float], threshold: float) -> int:
    return next((count for count, value in enumerate(ious, start=1) if value >= threshold), NOC_CAP)


def evaluate_sample(sample: Sample, policy: Policy, tool: SegmentationTool, max_turns: int) -> dict[str, Any]:
    started = time.perf_counter()
    session = AgentSession(sample.image, sample.instruction or f"Segment the {sample.target}.", policy, tool,
                           max_turns=max_turns, image_source=sample.id)  # fmt: skip
    trace = session.run()
    click_ious = [iou(sample.ground_truth, s.mask) for s in trace.steps if s.pixel is not None and s.mask is not None]
    return {
        "id": sample.id,
        "modality": sample.modality,
        **overlap(sample.ground_truth, session.mask),
        "turns": len(trace.steps),
        "clicks": len(click_ious),
        "stop_reason": trace.stop_reason,
        "seconds": time.perf_counter() - started,
        **{f"noc{round(t * 100)}": clicks_to_reach(click_ious, t) for t in NOC_THRESHOLDS},
    }


def evaluate(
    records: list[dict],
    load: Callable[[dict], Sample],
    policy_for: Callable[[Sample], Policy],
    tool: SegmentationTool,
    report_dir: Path,
    max_turns: int = 20,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    report_dir.mkdir(parents=True, exist_ok=True)
    results_path = report_dir / "results.jsonl"
    done = {}
    if results_path.exists():
        for line in results_path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                done[row["id"]] = row
    with results_path.open("a", encoding="utf-8") as results:
        for index, record in enumerate(records, start=1):
            if str(record["id"]) not in done:
                sample = load(record)
                row = evaluate_sample(sample, policy_for(sample), tool, max_turns)
                results.write(json.dumps(row) + "\n")
                results.flush()
                done[row["id"]] = row
            if progress is not None:
                progress(index, len(records))
    rows = [done[str(r["id"])] for r in records]
    report = {"summary": summarize(rows), "per_modality": {}, "samples": rows}
    for modality in sorted({r["modality"] for r in rows}):
        report["per_modality"][modality] = summarize([r for r in rows if r["modality"] == modality])
    (report_dir / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    (report_dir / "report.md").write_text(markdown(report), encoding="utf-8")
    return report


def summarize(rows: list[dict]) -> dict[str, float]:
    keys = ("dice", "iou", "f1", "turns", "noc85", "noc90", "seconds")
    return {"samples": len(rows), **{k: statistics.fmean(r[k] for r in rows) for k in keys}}


def markdown(report: dict[str, Any]) -> str:
    header = "| set | samples | Dice | IoU | F1 | turns | NoC@85 | NoC@90 |\n|---|---:|---:|---:|---:|---:|---:|---:|\n"

    def line(name: str, s: dict[str, float]) -> str:
        return (
            f"| {name} | {s['samples']} | {s['dice']:.4f} | {s['iou']:.4f} | {s['f1']:.4f} | {s['turns']:.1f} "
            f"| {s['noc85']:.2f} | {s['noc90']:.2f} |\n"
        )

    body = "".join(line(m, s) for m, s in report["per_modality"].items()) + line("**overall**", report["summary"])
    samples = "| id | modality | Dice | IoU | turns | stop |\n|---|---|---:|---:|---:|---|\n" + "".join(
        f"| {r['id']} | {r['modality']} | {r['dice']:.4f} | {r['iou']:.4f} | {r['turns']} | {r['stop_reason']} |\n"
        for r in report["samples"]
    )
    return f"# IBISAgent evaluation\n\n{header}{body}\n## Samples\n\n{samples}"
