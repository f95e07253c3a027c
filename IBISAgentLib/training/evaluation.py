"""The evaluation harness: per-sample overlap (SimpleITK's label overlap filter), turns, stop reason and
time; NoC@85 / NoC@90 for click policies; with a propagator, the volume-level Dice and 95 % Hausdorff
distance of the propagated 3D mask, and with the volume agent's check the same after it; with the search,
whether the key slice it finds shows the target (the hit rate); tables per modality and overall. Resumable:
every finished sample is appended to ``results.jsonl`` and skipped on the next run. ``workers`` sessions run
at once (threads: the model behind an OpenAI-compatible endpoint batches their requests), sharing one click
tool and one propagator, so the results are those of one worker."""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import SimpleITK as sitk

from ..agent.interfaces import Policy, SegmentationTool
from ..agent.session import AgentSession
from ..agent.volume_agent import check_propagation, search_key_slice
from ..imaging.geometry import SliceGeometry
from ..imaging.volume_case import VolumeCase
from ..tools.propagation import PropagationResult
from ..tools.shared import SharedTool
from .manifest import Sample
from .oracle import iou

NOC_THRESHOLDS = (0.85, 0.90)
NOC_CAP = 20  # clicks counted for a sample that never reaches the threshold, as in the literature
HAUSDORFF_PERCENTILE = 95


class Propagator(Protocol):
    def propagate(
        self, volume: np.ndarray, key: SliceGeometry, key_mask: np.ndarray, *, extra_keys: dict | None = None
    ) -> Any: ...


Propagate = Callable[[Sample, np.ndarray, dict[int, np.ndarray]], PropagationResult]


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


def volume_overlap(truth: np.ndarray, mask: np.ndarray, reference: sitk.Image) -> dict[str, float | None]:
    """Dice and the 95 % Hausdorff distance in mm of two (k, j, i) masks on ``reference``'s grid.

    HD95 is the larger of the two directed 95th percentiles of surface-to-surface distances (as MONAI
    computes it); surfaces are SimpleITK's label contours, distances its Maurer distance maps in physical
    units. It is None when either mask is empty (undefined)."""
    dice = overlap(truth, mask)["dice"]
    if not truth.any() or not mask.any():
        return {"volume_dice": dice, "hd95_mm": None}
    images = []
    for array in (truth, mask):
        image = sitk.GetImageFromArray(array.astype(np.uint8))
        image.CopyInformation(reference)
        images.append(image)
    # Copies, not views: a view does not keep the filter's output image alive.
    surfaces = [sitk.GetArrayFromImage(sitk.LabelContour(image)) > 0 for image in images]
    distances = [
        np.abs(sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(image, squaredDistance=False, useImageSpacing=True)))
        for image in images
    ]
    directed = (
        np.percentile(distances[1][surfaces[0]], HAUSDORFF_PERCENTILE),
        np.percentile(distances[0][surfaces[1]], HAUSDORFF_PERCENTILE),
    )
    return {"volume_dice": dice, "hd95_mm": float(max(directed))}


def clicks_to_reach(ious: list[float], threshold: float) -> int:
    return next((count for count, value in enumerate(ious, start=1) if value >= threshold), NOC_CAP)


def evaluate_sample(
    sample: Sample,
    policy: Policy,
    tool: SegmentationTool,
    max_turns: int,
    propagate: Propagate | None = None,
    check_budget: int | None = None,
    search: bool = False,
) -> dict[str, Any]:
    """One sample's row; ``propagate`` (sample, key-slice mask, extra key slices) adds the volume-level measures,
    ``check_budget`` the same after the volume agent's check, and ``search`` whether the key slice the agent
    finds on the sample's axis shows the target. The session itself works on the manifest's slice, so the
    per-slice measures stay comparable with and without them."""
    started = time.perf_counter()
    session = AgentSession(
        sample.image, sample.task, policy, tool, max_turns=max_turns, image_source=sample.id, case=sample.case
    )
    try:
        trace = session.run()
    finally:
        session.close()
    click_ious = [iou(sample.ground_truth, s.mask) for s in trace.steps if s.pixel is not None and s.mask is not None]
    row = {
        "id": sample.id,
        "modality": sample.modality,
        **overlap(sample.ground_truth, session.mask),
        "turns": len(trace.steps),
        "clicks": len(click_ious),
        "stop_reason": trace.stop_reason,
        **{f"noc{round(t * 100)}": clicks_to_reach(click_ious, t) for t in NOC_THRESHOLDS},
    }
    case, truth = sample.case, sample.volume_truth
    if case is not None and truth is not None:

        def on_slice(slice_case: VolumeCase, mask: np.ndarray | None = None, turns: int = max_turns) -> AgentSession:
            return AgentSession(slice_case.slice_rgb(), sample.task, policy, tool, initial_mask=mask, max_turns=turns,
                                image_source=sample.id, case=slice_case)  # fmt: skip

        if search:
            found = search_key_slice(lambda slice_case: on_slice(slice_case, turns=1), case)
            row["key_slice"] = found.key
            row["key_slice_hit"] = found.key is not None and bool(case.at(found.key).geometry.extract(truth).any())
        if propagate is not None and session.mask.any():
            result = propagate(sample, session.mask, {})
            row.update(volume_overlap(truth, result.mask, case.image))
            if check_budget is not None:
                checked, checks, _ = check_propagation(
                    lambda extra: propagate(sample, session.mask, extra), on_slice, case, result,
                    [(c.y, c.x) for c in session.clicks if not c.positive], check_budget,
                )  # fmt: skip
                after = volume_overlap(truth, checked.mask, case.image)
                row.update({f"{name}_checked": value for name, value in after.items()})
                row["checks"] = len(checks)
    row["seconds"] = time.perf_counter() - started
    return row


def evaluate(
    records: list[dict],
    load: Callable[[dict], Sample],
    policy_for: Callable[[Sample], Policy],
    tool: SegmentationTool,
    report_dir: Path,
    max_turns: int = 20,
    progress: Callable[[int, int], None] | None = None,
    workers: int = 1,
    propagator: Propagator | None = None,
    check_budget: int | None = None,
    search: bool = False,
) -> dict[str, Any]:
    """Evaluate every record not yet in ``report_dir/results.jsonl`` with ``workers`` sessions at once.

    ``policy_for`` is called once per sample, on the worker's thread: with several workers it must give
    each session a policy of its own or one that is safe to share (an HTTP client, the oracle)."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    report_dir.mkdir(parents=True, exist_ok=True)
    results_path = report_dir / "results.jsonl"
    done = _finished(results_path)
    shared = SharedTool(tool)
    propagate = None if propagator is None else _serialized_propagation(propagator)
    written = threading.Lock()

    with results_path.open("a", encoding="utf-8") as results:

        def run(record: dict) -> None:
            sample = load(record)
            row = evaluate_sample(sample, policy_for(sample), shared, max_turns, propagate, check_budget, search)
            with written:
                results.write(json.dumps(row) + "\n")
                results.flush()
                done[row["id"]] = row
                if progress is not None:
                    progress(len(done), len(records))

        todo = [record for record in records if str(record["id"]) not in done]
        if progress is not None:
            progress(len(records) - len(todo), len(records))
        with ThreadPoolExecutor(workers, thread_name_prefix="ibisagent-eval") as pool:
            futures = [pool.submit(run, record) for record in todo]
            try:
                finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
            finally:  # on a failure or Ctrl-C no new sample starts; those running finish and are kept
                pool.shutdown(wait=False, cancel_futures=True)
        for future in finished:
            future.result()
    rows = [done[str(r["id"])] for r in records]
    report = {"summary": summarize(rows), "per_modality": {}, "samples": rows}
    for modality in sorted({r["modality"] for r in rows}):
        report["per_modality"][modality] = summarize([r for r in rows if r["modality"] == modality])
    (report_dir / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    (report_dir / "report.md").write_text(markdown(report), encoding="utf-8")
    return report


def _finished(results_path: Path) -> dict[str, dict]:
    done = {}
    if results_path.exists():
        for line in results_path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                done[row["id"]] = row
    return done


def _serialized_propagation(propagator: Propagator) -> Propagate:
    """Propagation through the sample's whole volume, one volume at a time (one model, shared)."""
    lock = threading.Lock()

    def propagate(sample: Sample, key_mask: np.ndarray, extra: dict[int, np.ndarray]) -> PropagationResult:
        assert sample.case is not None
        with lock:
            return propagator.propagate(sample.case.windowed, sample.case.geometry, key_mask, extra_keys=extra)

    return propagate


def summarize(rows: list[dict]) -> dict[str, float]:
    """Means over the rows; the volume measures over the rows that have them (HD95 where it is defined)."""
    keys = ("dice", "iou", "f1", "turns", "noc85", "noc90", "seconds")
    summary: dict[str, float] = {"samples": len(rows), **{k: statistics.fmean(r[k] for r in rows) for k in keys}}
    volumes = [r for r in rows if "volume_dice" in r]
    if volumes:
        summary["volumes"] = len(volumes)
        for suffix in ("", "_checked"):
            measured = [r for r in volumes if f"volume_dice{suffix}" in r]
            if not measured:
                continue
            summary[f"volume_dice{suffix}"] = statistics.fmean(r[f"volume_dice{suffix}"] for r in measured)
            distances = [r[f"hd95_mm{suffix}"] for r in measured if r[f"hd95_mm{suffix}"] is not None]
            summary[f"hd95_mm{suffix}"] = statistics.fmean(distances) if distances else None
    searched = [r for r in rows if "key_slice_hit" in r]
    if searched:
        summary["key_slice_hit_rate"] = statistics.fmean(float(r["key_slice_hit"]) for r in searched)
    return summary


def markdown(report: dict[str, Any]) -> str:
    summary = report["summary"]
    with_volumes, checked, searched = ("volumes" in summary, "volume_dice_checked" in summary,
                                       "key_slice_hit_rate" in summary)  # fmt: skip
    header = "| set | samples | Dice | IoU | F1 | turns | NoC@85 | NoC@90 |"
    rule = "|---|---:|---:|---:|---:|---:|---:|---:|"
    if with_volumes:
        header, rule = header + " volumes | 3D Dice | HD95 (mm) |", rule + "---:|---:|---:|"
    if checked:
        header, rule = header + " 3D Dice, checked | HD95 (mm), checked |", rule + "---:|---:|"
    if searched:
        header, rule = header + " key-slice hits |", rule + "---:|"

    def line(name: str, s: dict[str, Any]) -> str:
        text = (
            f"| {name} | {s['samples']} | {s['dice']:.4f} | {s['iou']:.4f} | {s['f1']:.4f} | {s['turns']:.1f} "
            f"| {s['noc85']:.2f} | {s['noc90']:.2f} |"
        )
        if with_volumes:
            text += f" {s.get('volumes', 0)} | {_number(s.get('volume_dice'))} | {_number(s.get('hd95_mm'), 2)} |"
        if checked:
            text += f" {_number(s.get('volume_dice_checked'))} | {_number(s.get('hd95_mm_checked'), 2)} |"
        if searched:
            text += f" {_number(s.get('key_slice_hit_rate'), 2)} |"
        return text + "\n"

    body = "".join(line(m, s) for m, s in report["per_modality"].items()) + line("**overall**", report["summary"])
    sample_header = "| id | modality | Dice | IoU | turns | stop |"
    sample_rule = "|---|---|---:|---:|---:|---|"
    if with_volumes:
        sample_header, sample_rule = sample_header + " 3D Dice | HD95 (mm) |", sample_rule + "---:|---:|"

    def sample_line(r: dict[str, Any]) -> str:
        text = f"| {r['id']} | {r['modality']} | {r['dice']:.4f} | {r['iou']:.4f} | {r['turns']} | {r['stop_reason']} |"
        if with_volumes:
            text += f" {_number(r.get('volume_dice'))} | {_number(r.get('hd95_mm'), 2)} |"
        return text + "\n"

    samples = "".join(sample_line(r) for r in report["samples"])
    return (
        f"# IBISAgent evaluation\n\n{header}\n{rule}\n{body}\n## Samples\n\n{sample_header}\n{sample_rule}\n{samples}"
    )


def _number(value: float | None, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"
