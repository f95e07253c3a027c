"""``ibisagent demo``: the whole pipeline on the bundled sample, with the released weights when they are
at hand or downloadable, otherwise — said loudly — on tiny random-weight models."""

from __future__ import annotations

import sys
from pathlib import Path

SAMPLE_IMAGE = Path(__file__).with_name("samples") / "ct_thoracic_vertebra.png"
SAMPLE_PROMPT = "segment the vertebral body"
# A correction click on the vertebral body of the sample (column, row), added when running on tiny
# models so that the demo shows MedSAM2 answering a click even though the tiny model's text is noise.
SAMPLE_CORRECTION = "57,27,+"

_BANNER = """\
#############################################################################
#  RELEASED WEIGHTS NOT AVAILABLE: RUNNING ON TINY RANDOM-WEIGHT MODELS      #
#  Every stage of the pipeline runs for real, but the reasoning, the clicks  #
#  and the mask below are MEANINGLESS. Get the weights to see real results.  #
#############################################################################"""


def demo_arguments(workdir: Path, device: str) -> list[str]:
    """The ``ibisagent segment`` arguments of the demo, after finding (or standing in for) the weights."""
    from ..models.weights import WeightsUnavailable, mllm_spec, resolve_mllm_folder, resolve_sam2_file, sam2_spec

    print(
        "looking for the released IBIS and MedSAM2 weights (cache, then Hugging Face) ...", file=sys.stderr, flush=True
    )
    try:
        mllm = str(resolve_mllm_folder(mllm_spec(None)))
        sam2 = str(resolve_sam2_file(sam2_spec(None)))
        corrections: list[str] = []
    except WeightsUnavailable as exc:
        print(f"\n{_BANNER}\n\n{exc}\n", file=sys.stderr, flush=True)
        mllm, sam2 = _tiny_models(workdir / "tiny-models")
        corrections = ["--click", SAMPLE_CORRECTION]
    out = workdir / "demo"
    print(f'segmenting {SAMPLE_IMAGE.name} with the instruction "{SAMPLE_PROMPT}"', flush=True)
    return [
        "segment",
        str(SAMPLE_IMAGE),
        "--prompt",
        SAMPLE_PROMPT,
        "--mllm",
        mllm,
        "--sam2",
        sam2,
        "--out",
        str(out / "mask.png"),
        "--trace",
        str(out / "trace.json"),
        "--overlays",
        str(out / "overlays"),
        "--device",
        device,
        *corrections,
    ]


def _tiny_models(folder: Path) -> tuple[str, str]:
    from ..models.tiny_models import demo_models

    print(f"tiny random-weight models in {folder} (built once) ...", file=sys.stderr, flush=True)
    mllm, medsam2 = demo_models(folder)
    return str(mllm), str(medsam2)
