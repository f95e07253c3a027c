"""``ibisagent segment``: one image or volume slice, from its arguments to the mask, the trace and maybe a
scene bundle. The handler turns the arguments into typed values once; the helpers take those values."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import TextIO

import numpy as np

from ..agent import jsontext
from ..agent.actions import format_action
from ..agent.backends import Backend, Session
from ..agent.prompts import IBIS_V1
from ..agent.trace import ImageInfo, Step, Trace
from ..agent.volume_agent import DEFAULT_CHECK_BUDGET, SearchResult, search_key_slice
from ..imaging.images import ImageInputError, read_mask, read_rgb_image, write_mask, write_rgb
from ..imaging.limits import ImageLimits
from ..imaging.rendering import overlay_mask
from ..imaging.volume_case import VolumeCase
from ..imaging.volumes import write_labelmap
from ..models.devices import DEVICE_CHOICES
from ..models.loading import spec_serves_threads
from ..models.weights import mllm_spec
from ..remote.client import RemoteError
from ..tools import PropagationOptions
from ..workflow.choice import BackendChoice
from .options import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    UserError,
    add_limit_options,
    add_segmenter_options,
    build_backend,
    check_writable,
    image_limits,
    non_negative_int,
    positive_int,
    user_click,
)
from .pacs import add_pacs_options, checked_archive, pacs_settings, require_pacs_libraries, retrieve, series_ref


def add_command(commands: argparse._SubParsersAction) -> None:
    segment = commands.add_parser("segment", help="segment a 2D image or a slice of a volume from a text instruction")
    segment.add_argument(
        "image",
        help="PNG/JPEG/BMP/TIFF image, or a volume: .nii, .nii.gz, .nrrd, .mha, .mhd, a DICOM folder, or "
        "pacs:SERIES_UID (pacs:STUDY_UID/SERIES_UID) with --pacs",
    )
    _add_run_options(segment)
    _add_volume_options(segment)
    add_pacs_options(segment, ca_bundle=False)  # --ca-bundle verifies the server's and the PACS's TLS alike
    segment.add_argument(
        "--store", action="store_true", help="send the result to the PACS as a DICOM SEG, into the source's study"
    )
    segment.set_defaults(handler=_segment)


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt", required=True, help='what to segment, e.g. "segment the liver tumor"')
    parser.add_argument(
        "--mllm",
        help="model folder, Hugging Face id (owner/repo:folder), http(s)://HOST/v1 endpoint or replay:FILE.json "
        "(default: $IBISAGENT_MLLM or manglu3935/IBIS:qwen2_5vl-7b-RL)",
    )
    parser.add_argument(
        "--mllm-model", help="model name at an http(s) endpoint (default: $IBISAGENT_MLLM_MODEL or the only one served)"
    )
    parser.add_argument("--api-key", help="API key for an http(s) endpoint (default: $IBISAGENT_API_KEY)")
    add_segmenter_options(parser)
    parser.add_argument(
        "--out",
        help="mask to write: PNG for images, .nii.gz/.nrrd/.mha for volumes, .dcm (a DICOM SEG) for DICOM input "
        "(default: IMAGE-STEM_mask.png, IMAGE-STEM_mask.nii.gz, or IMAGE-STEM_seg.dcm with --store)",
    )
    parser.add_argument("--trace", help="trace JSON to write (default: IMAGE-STEM_trace.json in the current folder)")
    parser.add_argument(
        "--scene",
        help="also write the result as a 3D Slicer scene (.mrb) to review: the volume, the segment, the clicks "
        "and the trace (volumes only; needs the [slicer] extra)",
    )
    parser.add_argument("--overlays", help="folder for the image the model saw at each turn")
    parser.add_argument(
        "--initial-mask", help="mask to refine instead of starting from nothing (PNG, or a labelmap for volumes)"
    )
    parser.add_argument("--max-turns", type=positive_int, default=20, help="agent turns at most (default 20)")
    parser.add_argument(
        "--click",
        action="append",
        type=user_click,
        default=[],
        metavar="X,Y[,+|-]",
        help="a correction click at pixel column X, row Y of the (slice) image after the agent stops; repeatable",
    )
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    parser.add_argument("--server", help="run on an IBISAgent server at this URL instead of in this process")
    parser.add_argument(
        "--token", help="the server's bearer token (visible to other users in ps: prefer --token-file or the variable)"
    )
    parser.add_argument("--token-file", help="a file holding the server's bearer token (default: $IBISAGENT_TOKEN)")
    parser.add_argument(
        "--ca-bundle", help="CA certificate file to verify the TLS certificates of the server and the PACS with"
    )
    parser.add_argument(
        "--jsonl", action="store_true", help="print each step as a trace-schema JSON line instead of text"
    )


def _add_volume_options(parser: argparse.ArgumentParser) -> None:
    volume = parser.add_argument_group("volumes")
    volume.add_argument(
        "--slice",
        help="AXIS:INDEX, AXIS one of axial, coronal, sagittal (default: the middle axial slice); auto or AXIS:auto: "
        "the agent finds the slice that shows the target (axial by default)",
    )
    volume.add_argument(
        "--window",
        help="abdomen, lung, bone, brain, percentile or LEVEL,WIDTH (default: abdomen for CT, percentile otherwise)",
    )
    volume.add_argument("--propagate", action="store_true", help="grow the result through the volume with MedSAM2")
    volume.add_argument("--range", help="A:B, the slices to propagate through (default: all)")
    volume.add_argument(
        "--stop-after-empty",
        type=non_negative_int,
        default=3,
        help="stop a direction after this many empty slices in a row (0: never; default 3)",
    )
    volume.add_argument("--largest-component", action="store_true", help="keep only the largest 3D connected part")
    volume.add_argument(
        "--check",
        action="store_true",
        help="with --propagate: flag propagated slices that look wrong, let the agent re-check them from the "
        "propagated mask, and propagate again from the slices it corrected",
    )
    volume.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="slices the search and the check ask the model about at once (an http(s) endpoint or the oracle "
        "answers several; default 1)",
    )
    volume.add_argument(
        "--check-budget",
        type=non_negative_int,
        default=DEFAULT_CHECK_BUDGET,
        help=f"slices the check may re-run the agent on (default {DEFAULT_CHECK_BUDGET})",
    )
    add_limit_options(parser)


@dataclass(frozen=True)
class SegmentRun:
    """What one run does once its inputs are read: the arguments as typed values, checked."""

    source: str  # the image or volume as the user named it (the trace records it)
    prompt: str
    max_turns: int
    clicks: tuple[tuple[int, int, bool], ...]
    jsonl: bool
    overlays: Path | None
    propagation: PropagationOptions | None
    search: bool = False  # --slice auto: find the key slice first
    check_budget: int | None = None  # --check: re-check flagged slices, at most this many
    workers: int = 1  # sessions the search and the check run at once


def _segment(args: argparse.Namespace) -> int:
    """The handler: the arguments become typed values here, once; nothing below reads the namespace. A series
    retrieved from a PACS lives in a temporary folder for the run (the SEG references its headers)."""
    with contextlib.ExitStack() as cleanup:
        return _segment_with(args, cleanup)


def _segment_with(args: argparse.Namespace, cleanup: contextlib.ExitStack) -> int:
    pacs = pacs_settings(args)
    ref = series_ref(args.image)
    if ref is not None and pacs is None:
        raise UserError(f"{args.image}: a PACS series needs --pacs URL (the PACS's DICOMweb root)")
    if args.store and pacs is None:
        raise UserError("--store sends the result to a PACS: give --pacs URL")
    if not args.prompt.strip():
        raise UserError("--prompt is empty: say what to segment")
    search = bool(args.slice) and args.slice.strip().lower().rpartition(":")[2] == "auto"
    slice_spec = (args.slice.strip().lower().removesuffix("auto").rstrip(":") or "axial") if search else args.slice
    if args.check and not args.propagate:
        raise UserError("--check applies to --propagate: it checks the propagated slices")
    if args.workers > 1 and args.server:
        raise UserError("--workers applies to models in this process; a server runs one model job at a time")
    if args.workers > 1 and not spec_serves_threads(mllm_spec(args.mllm)):
        raise UserError(
            f"--workers {args.workers} needs a policy that answers several sessions at once (an http(s) endpoint, "
            "e.g. vLLM, or oracle:); a model in this process answers one at a time"
        )
    if search and args.initial_mask:
        raise UserError("--initial-mask refines a slice you name: give --slice AXIS:INDEX with it, not auto")
    source = Path(args.image)
    stem, dicom = _stem(source), source if source.is_dir() else None
    if ref is not None:
        stem = f"pacs_{ref.series_uid}"
    if ref is not None or args.store:  # the outputs checked before the PACS is asked anything
        _output_paths(stem, args.out, args.trace, True, ref is not None or dicom is not None, args.store)
    if ref is not None:
        source = dicom = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="ibisagent-pacs-")))
        archive = retrieve(pacs, ref, source, image_limits(args))
    elif args.store:
        archive = checked_archive(pacs)
    case, image, initial_mask = _read_inputs(str(source), slice_spec, args.window, args.initial_mask,
                                             image_limits(args))  # fmt: skip
    if case is None:
        _refuse_volume_options(args.image, slice=args.slice, window=args.window, range=args.range,
                               propagate=args.propagate)  # fmt: skip
    out, trace_path = _output_paths(stem, args.out, args.trace, case is not None, dicom is not None, args.store)
    sources = _seg_sources(dicom, case, image_limits(args)) if out.suffix.lower() == ".dcm" else None
    overlays = _overlays_folder(args.overlays)
    _refuse_overwriting_inputs(
        {"--out": out, "--trace": trace_path, "--scene": args.scene and Path(args.scene)},
        [Path(p) for p in (source, args.initial_mask, _replay_file(args.mllm)) if p],
    )
    _check_clicks(args.click, image.shape[:2])
    write_scene = _scene_writer(args.scene, case) if args.scene else None
    options = None
    if args.propagate:
        options = _propagation_options(args.range, args.stop_after_empty, args.largest_component, case)
    run = SegmentRun(
        str(args.image), args.prompt, args.max_turns, tuple(args.click), args.jsonl, overlays, options, search,
        args.check_budget if args.check else None, args.workers,
    )  # fmt: skip
    token = _token(args.token, args.token_file) if args.server else None
    backend = build_backend(BackendChoice.from_arguments(args, token))
    report = sys.stderr if args.jsonl else sys.stdout
    outcome = _run(run, backend, case, image, initial_mask, report)
    trace = outcome.trace
    trace.save(trace_path)
    seg = None
    if case is None:
        write_mask(out, outcome.mask)
    elif sources is not None:
        seg = _write_seg(out, sources, outcome.mask, trace, outcome.case)
        if seg is None:
            return EXIT_FAILED
    else:
        write_labelmap(out, outcome.mask, case.image)
    if write_scene is not None:
        try:
            write_scene(args.scene, outcome.case, outcome.mask, trace, Path(args.image).name)
        except Exception as exc:  # Slicer's core reports failures in several types; all end the same way
            print(f"ibisagent: could not write the scene {args.scene}: {exc}", file=sys.stderr)
            return EXIT_FAILED
    area = int(trace.steps[-1].mask_area if trace.steps else np.count_nonzero(outcome.mask))
    summary = f"stopped: {trace.stop_reason}; mask {area} px -> {out}; trace -> {trace_path}"
    if trace.answer:
        summary += f"\nanswer: {trace.answer}"
    print(summary, file=report, flush=True)
    if args.store and not _stored(archive, seg, _unfit_to_store(seg, trace, outcome)):
        return outcome.exit_code or EXIT_FAILED
    if trace.stop_reason == "error":
        reason = trace.error or next((s.error for s in reversed(trace.steps) if s.error), "unknown error")
        print(f"ibisagent: the run failed: {reason}", file=sys.stderr)
        return EXIT_FAILED
    return outcome.exit_code


@dataclass
class _Outcome:
    mask: np.ndarray  # the 2D mask, or the 3D labelmap of a volume
    trace: Trace
    exit_code: int
    case: VolumeCase | None = None  # the volume at the slice the agent worked on (found by --slice auto)


def _run(
    run: SegmentRun,
    backend: Backend,
    case: VolumeCase | None,
    image: np.ndarray,
    initial_mask: np.ndarray | None,
    report: TextIO,
) -> _Outcome:
    """The agent, the scripted corrections and the propagation. Whatever fails or is interrupted once the
    inputs are good, the outcome holds what was done until then: the one place a failed run is written from."""

    def on_step(step: Step) -> None:
        _print_step(step, run.jsonl)
        if run.overlays is not None and step.mask is not None:
            picture = overlay_mask(image, step.mask, IBIS_V1.overlay_color, IBIS_V1.overlay_alpha)
            write_rgb(run.overlays / f"step_{step.turn:02d}.png", picture)

    session, propagated, exit_code, error, found = None, None, EXIT_OK, None, None
    try:
        if run.search and case is not None:
            found = _search(case, backend, run, report)
            if found.key is None:
                return _Outcome(np.zeros(case.windowed.shape, bool), _not_found_trace(run, case, found), EXIT_OK, case)
            case = case.at(found.key)
            image = case.slice_rgb()
        session = backend.open_session(
            case if case is not None else image,
            run.prompt,
            initial_mask=initial_mask,
            max_turns=run.max_turns,
            on_step=on_step,
            image_source=run.source,
        )
        session.run()
        for x, y, positive in run.clicks:
            session.add_click(x, y, positive)
        if run.propagation is not None and case is not None and session.stop_reason != "error":
            propagated, exit_code, records = _propagate(case, backend, session, report, run)
    except KeyboardInterrupt:
        if session is not None:
            session.cancel()
            session.stop_reason = "cancelled"
        exit_code = EXIT_INTERRUPTED
    except RemoteError as exc:
        exit_code, error = EXIT_FAILED, str(exc)
    except Exception as exc:  # any other failure still writes what was done; its details go to the log
        logging.getLogger("ibisagent").debug("the run failed", exc_info=True)
        exit_code, error = EXIT_FAILED, f"{type(exc).__name__}: {exc}"
    if session is None:
        key = initial_mask if initial_mask is not None else np.zeros(image.shape[:2], dtype=bool)
        trace = _unstarted_trace(run, image, initial_mask, error)
    else:
        key = session.mask
        trace = session.trace()
        with contextlib.suppress(RemoteError):  # a remote session frees the server's memory at once
            session.close()
    if found is not None:
        trace.search = found.to_dict()
    if propagated is not None:
        trace.propagation, trace.checks = records
    if error is not None:
        trace.stop_reason, trace.error = "error", trace.error or error
    if case is None:
        return _Outcome(key, trace, exit_code)
    return _Outcome(propagated if propagated is not None else case.place(key), trace, exit_code, case)


def _unstarted_trace(run: SegmentRun, image: np.ndarray, initial_mask: np.ndarray | None, error: str | None) -> Trace:
    height, width = image.shape[:2]
    return Trace(
        instruction=run.prompt.strip(),
        image=ImageInfo(width=width, height=height, source=run.source),
        models={},
        steps=[],
        answer=None,
        stop_reason="error" if error else "cancelled",
        initial_mask_area=None if initial_mask is None else int(np.count_nonzero(initial_mask)),
        error=error,
    )


def _search(case: VolumeCase, backend: Backend, run: SegmentRun, report: TextIO) -> SearchResult:
    """``--slice auto``: the agent looks for the slice that shows the target, each look printed."""

    def said(record) -> None:  # -> SearchRecord
        area = f", first click {record.area} px" if record.verdict == "present" else ""
        print(f"search: {case.geometry.axis} {record.index}: {record.verdict}{area}", file=report, flush=True)

    threaded = backend.for_threads() if run.workers > 1 else backend
    found = search_key_slice(
        lambda slice_case: threaded.open_session(slice_case, run.prompt, max_turns=1, image_source=run.source),
        case,
        on_record=said,
        workers=run.workers,
    )
    print(f"search: {found.summary()}", file=report, flush=True)
    return found


def _not_found_trace(run: SegmentRun, case: VolumeCase, found: SearchResult) -> Trace:
    return Trace(
        instruction=run.prompt.strip(),
        image=ImageInfo(width=case.geometry.width, height=case.geometry.height, source=run.source),
        models={},
        steps=[],
        answer=found.absent_answer(),
        stop_reason="terminate",
        slice={"axis": case.geometry.axis, "index": case.geometry.index, "window": case.window.describe()},
        search=found.to_dict(),
    )


def _propagate(
    case: VolumeCase, backend: Backend, session: Session, report: TextIO, run: SegmentRun
) -> tuple[np.ndarray | None, int, tuple[dict | None, list | None]]:
    """The propagated 3D mask, or None (the key slice alone) when there is nothing to grow or it was interrupted;
    the exit code; and what the trace records of it (each slice with its flags, and the checks)."""
    from tqdm import tqdm

    if not session.mask.any():
        print("nothing to propagate: the key slice mask is empty", file=report, flush=True)
        return None, EXIT_OK, (None, None)
    first, last = run.propagation.span(case.geometry)
    with tqdm(total=last - first + 1, desc="propagating", unit="slice", file=sys.stderr) as bar:

        def progress(done: int, total: int, index: int) -> None:
            if done < bar.n:  # the check propagates again from the slices it corrected
                bar.reset()
            bar.total = total
            bar.update(done - bar.n)
            bar.set_postfix_str(f"{case.geometry.axis} {index}")

        def checked(record: dict) -> None:
            print(f"check: {case.geometry.axis} {record['index']} ({', '.join(record['why'])}): {record['outcome']}, "
                  f"{record['area_before']} -> {record['area_after']} px", file=report, flush=True)  # fmt: skip

        try:
            result = backend.propagate_and_check(
                session, run.propagation, run.check_budget, on_progress=progress, on_check=checked,
                workers=run.workers,
            )  # fmt: skip
        except KeyboardInterrupt:
            print("propagation interrupted: writing the key slice only", file=sys.stderr)
            return None, EXIT_INTERRUPTED, (None, None)
    voxels = int(result.mask.sum())
    if result.checks is None:
        print(f"propagated through {len(result.slices)} slices: {voxels} voxels", file=report)
    else:
        corrected = sum(c["outcome"] in ("corrected", "cleared") for c in result.checks)
        still = ", ".join(str(s["index"]) for s in result.slices if s["flags"]) or "none"
        print(f"propagated and checked: {len(result.checks)} slices re-checked, {corrected} corrected; still "
              f"flagged: {still}; {voxels} voxels", file=report)  # fmt: skip
    return result.mask, EXIT_OK, (result.propagation_record(), result.checks)


def _propagation_options(
    text: str | None, stop_after_empty: int, largest_component: bool, case: VolumeCase | None
) -> PropagationOptions:
    """``--range A:B`` and the other propagation flags as one value, checked against the volume."""
    if case is None:
        raise UserError("--propagate applies to volumes")
    first = last = None
    if text:
        try:
            first, last = (int(part) for part in text.split(":"))
        except ValueError:
            raise UserError(f"--range {text!r}: use A:B with whole slice numbers") from None
    options = PropagationOptions(first, last, stop_after_empty, largest_component)
    try:
        options.span(case.geometry)
    except ValueError as exc:
        raise UserError(f"--range {text}: {exc}") from None
    return options


def _stem(source: Path) -> str:
    """The input's name without its file type: what default output names start with."""
    from ..imaging.volumes import VOLUME_SUFFIXES

    stem = source.name
    for suffix in (*VOLUME_SUFFIXES, *source.suffixes[-1:]):
        stem = stem.removesuffix(suffix)
    return stem


def _output_paths(
    stem: str, out: str | None, trace: str | None, volume: bool, dicom: bool = False, store: bool = False
) -> tuple[Path, Path]:
    """The mask and trace files (defaults beside the current folder, named for the input), checked writable.
    DICOM input may be written as a DICOM SEG (.dcm), which --store needs."""
    from ..imaging.volumes import VOLUME_SUFFIXES

    if store and not dicom:
        raise UserError("--store sends a DICOM SEG, which needs DICOM input: a DICOM folder or pacs:SERIES_UID")
    default = "_seg.dcm" if store else "_mask.nii.gz" if volume else "_mask.png"
    mask_path = Path(out or f"{stem}{default}")
    seg = mask_path.suffix.lower() == ".dcm"
    if seg and not dicom:
        raise UserError(f"--out {mask_path}: a DICOM SEG references DICOM images; this input is not DICOM")
    if seg:
        require_pacs_libraries()
    if store and not seg:
        raise UserError(f"--out {mask_path}: --store sends a DICOM SEG: name the output NAME.dcm (or leave --out out)")
    if volume and not seg and not mask_path.name.lower().endswith(VOLUME_SUFFIXES):
        raise UserError(
            f"--out {mask_path}: a volume's mask is written as .nii.gz, .nii, .nrrd, .mha or .mhd"
            + (", or .dcm (a DICOM SEG)" if dicom else "")
        )
    if not volume and mask_path.name.lower().endswith(VOLUME_SUFFIXES):
        raise UserError(f"--out {mask_path}: a 2D image's mask is written as PNG")
    trace_path = Path(trace or f"{stem}_trace.json")
    for flag, path in (("--out", mask_path), ("--trace", trace_path)):
        check_writable(flag, path)
    return mask_path, trace_path


def _seg_sources(folder: Path, case: VolumeCase | None, limits: ImageLimits) -> list:  # -> pydicom Datasets
    """The headers a DICOM SEG of this series references, in the volume's slice order; refused before the run
    when the series cannot carry one (a multi-frame instance, repeated positions)."""
    from ..imaging.volumes import dicom_series_files
    from ..pacs.segmentation import check_seg_sources, source_headers

    sources = source_headers([Path(f) for f in dicom_series_files(folder, limits)])
    try:
        check_seg_sources(sources, case.image.GetDepth())
    except ValueError as exc:
        raise UserError(f"--out NAME.dcm: {exc}") from None
    return sources


def _write_seg(out: Path, sources: list, mask: np.ndarray, trace: Trace, case: VolumeCase):  # -> Dataset | None
    """The result as a DICOM SEG written to ``out``; when it cannot be made, the mask as NIfTI beside it (said),
    the trace being written already: nothing of the run is lost."""
    from ..pacs.segmentation import dicom_seg, write_seg

    try:
        seg = dicom_seg(sources, mask, trace.instruction, trace)
        write_seg(out, seg)
    except Exception as exc:  # highdicom reports what it cannot build in several types; all end the same way
        kept = out.with_name(out.name.removesuffix(out.suffix) + "_mask.nii.gz")
        write_labelmap(kept, mask, case.image)
        print(f"ibisagent: could not write the DICOM SEG {out} ({exc}); the mask is in {kept}", file=sys.stderr)
        return None
    return seg


def _unfit_to_store(seg, trace: Trace, outcome: _Outcome) -> str | None:
    """Why this result must not go into the clinical archive (cancelled, failed, empty, no SEG), or None."""
    if trace.stop_reason in ("error", "cancelled") or outcome.exit_code != EXIT_OK:
        return f"the run did not finish ({trace.stop_reason})"
    if seg is None:
        return "no DICOM SEG was written"
    if not outcome.mask.any():
        return "the segment is empty"
    return None


def _stored(archive, seg, unfit: str | None) -> bool:  # (Pacs, Dataset | None, str | None) -> bool
    """Send the SEG to the PACS unless it is ``unfit``; a failure is said, the local files being written."""
    from ..pacs import PacsError

    if unfit is not None:
        print(f"ibisagent: nothing stored on the PACS: {unfit}", file=sys.stderr)
        return False
    try:
        where = archive.store(seg)
    except PacsError as exc:
        print(f"ibisagent: the SEG was not stored ({exc}); the local files are written", file=sys.stderr)
        return False
    print(f"stored the SEG in {where}", file=sys.stderr)
    return True


def _overlays_folder(folder: str | None) -> Path | None:
    """The folder for the overlays, refused before the run when it is, or lies under, a file."""
    if not folder:
        return None
    path = Path(folder)
    existing = next(p for p in (path, *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"--overlays {folder}: {existing} is a file; name a folder")
    if not os.access(existing, os.W_OK):
        raise UserError(f"--overlays {folder}: cannot write in {existing}")
    return path


def _replay_file(mllm: str | None) -> str | None:
    return mllm.removeprefix("replay:") if mllm and mllm.startswith("replay:") else None


def _refuse_overwriting_inputs(outputs: dict[str, Path | None], inputs: list[Path]) -> None:
    """An output that is one of the run's inputs (the image, the mask to refine, the replay file), or that
    another output also names, would be lost: refused before the run."""
    taken: dict[Path, str] = {}
    for name in inputs:
        with contextlib.suppress(OSError):
            taken[name.resolve()] = f"the input {name}"
    for flag, path in outputs.items():
        if path is None:
            continue
        resolved = path.resolve()
        if resolved in taken or any(resolved.is_relative_to(p) for p in taken if p.is_dir()):
            raise UserError(f"{flag} {path}: is {taken.get(resolved, 'inside the input folder')}; name another file")
        taken[resolved] = f"also {flag}"


def _scene_writer(path: str, case):  # -> Callable[..., None]
    """The scene-bundle writer (Slicer's core, an optional extra), loaded before the run so a missing one
    costs nothing."""
    if case is None:
        raise UserError("--scene applies to volumes: a 2D image's result is the mask PNG and the trace")
    if not path.lower().endswith(".mrb"):
        raise UserError(f"--scene {path}: a Slicer scene bundle is written as .mrb")
    check_writable("--scene", Path(path))
    writers = entry_points(group="ibisagent.scene_bundle")
    try:
        return next(iter(writers)).load()
    except (StopIteration, ImportError) as exc:
        raise UserError(
            f"--scene needs 3D Slicer's core (slicer-core), which is not installed ({exc or 'no writer'}): "
            "pip install 'ibisagent[slicer]', or leave out --scene"
        ) from None


def _check_clicks(clicks: list[tuple[int, int, bool]], shape: tuple[int, int]) -> None:
    height, width = shape
    for x, y, _ in clicks:
        if not (0 <= x < width and 0 <= y < height):
            raise UserError(f"--click {x},{y}: outside the {width}x{height} image (columns 0..{width - 1}, "
                            f"rows 0..{height - 1})")  # fmt: skip


def _read_inputs(
    source: str, slice_spec: str | None, window: str | None, initial_mask: str | None, limits: ImageLimits
) -> tuple[VolumeCase | None, np.ndarray, np.ndarray | None]:
    """The volume (None for a 2D image), the image the agent sees, and the mask to refine."""
    from ..imaging.volumes import VolumeInputError, is_volume_path

    try:
        if is_volume_path(source):
            case = VolumeCase.load(source, slice_spec, window, limits)
            mask = case.slice_of_labelmap(initial_mask) if initial_mask else None
            return case, case.slice_rgb(), mask
        if slice_spec or window:
            raise UserError(f"{'--slice' if slice_spec else '--window'} applies to volumes; {source} is a 2D image")
        image = read_rgb_image(source, limits)
        mask = read_mask(initial_mask, image.shape[:2]) if initial_mask else None
        return None, image, mask
    except (ImageInputError, VolumeInputError, ValueError) as exc:
        raise UserError(str(exc)) from exc


def _refuse_volume_options(source: str, **given: object) -> None:
    """Options that apply to volumes only, given for a 2D image: a refusal naming the first."""
    for name, value in given.items():
        if value:
            raise UserError(f"--{name} applies to volumes; {source} is a 2D image")


def _token(token: str | None, token_file: str | None) -> str | None:
    """The server token of --token / --token-file / the environment (a refusal when the file is unreadable)."""
    from ..remote.client import token_from

    try:
        return token_from(token, token_file)
    except ValueError as exc:
        raise UserError(str(exc)) from exc


def _print_step(step: Step, as_json: bool) -> None:
    if as_json:
        print(jsontext.dumps(step.to_dict()), flush=True)
        return
    head = f"step {step.turn} ({step.source})"
    if step.action is not None:
        head += f": {format_action(step.action)}"
        if step.pixel is not None:
            head += f" -> pixel {step.pixel[0]},{step.pixel[1]}"
    if step.score is not None:
        head += f"  score {step.score:.3f}"
    head += f"  mask {step.mask_area} px"
    t = step.timings_ms
    if t:
        head += f"  [policy {t.get('policy', 0):.0f} ms, tool {t.get('tool', 0):.0f} ms]"
    lines = [head]
    if step.think:
        lines.append(f"  think: {step.think}")
    if step.answer:
        lines.append(f"  answer: {step.answer}")
    if step.error:
        lines.append(f"  ! {step.error}")
    print("\n".join(lines), flush=True)
