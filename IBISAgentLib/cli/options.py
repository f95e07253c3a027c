"""What the subcommands share: the refusal that exits 2, exit codes, argument types, the segmenter and
training-tool options, and the few checks and loaders more than one command runs."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from ..imaging.limits import MAX_DIMENSION, MAX_VOXELS, ImageLimits
from ..models.devices import DEVICE_CHOICES, PRECISION_CHOICES
from ..tools import MEDSAM2, SETTINGS, VARIANTS, variant_named

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


class UserError(Exception):
    """Bad input: printed as one line, exit code 2."""


def whole_number_at_least(minimum: int):  # -> Callable[[str], int]
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


non_negative_int = whole_number_at_least(0)
positive_int = whole_number_at_least(1)


def user_click(text: str) -> tuple[int, int, bool]:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("+", "-")):
        raise argparse.ArgumentTypeError(f"{text!r}: use X,Y or X,Y,+ or X,Y,-")
    try:
        return int(parts[0]), int(parts[1]), len(parts) == 2 or parts[2] == "+"
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: X and Y are whole pixel numbers") from None


VARIANT_NAMES = tuple(v.name for v in VARIANTS)
RELEASED = variant_named("sam2-hiera-l")


def add_segmenter_options(parser: argparse.ArgumentParser) -> None:
    """The click tool and the propagator: any SAM 2 family checkpoint (the segment command and the server)."""
    group = parser.add_argument_group("segmenter")
    which = group.add_mutually_exclusive_group()
    which.add_argument(
        "--segmenter",
        "--sam2",
        dest="sam2",
        help="the click tool and its propagator: classical (weight-free random walker), a SAM 2 family variant's "
        "name (its released checkpoint), or a checkpoint file or Hugging Face id (owner/repo[:file]); the "
        "variant comes from the id, from --sam2-variant, or from the checkpoint's tensors (default: "
        f"$IBISAGENT_SAM2 or {SETTINGS['paper']}). --sam2 is the same option",
    )
    which.add_argument(
        "--setting",
        choices=tuple(SETTINGS),
        help=f"paper: {MEDSAM2.title} (the paper, the default); released: {RELEASED.title} at "
        f"{RELEASED.image_size} px, the segmenter the released IBIS weights were tuned with in the authors' code",
    )
    names = ", ".join(VARIANT_NAMES)
    group.add_argument(
        "--sam2-variant",
        choices=VARIANT_NAMES,
        metavar="NAME",
        help=f"the variant of --sam2, where it does not tell: {names}",
    )
    group.add_argument("--propagator", help="the checkpoint that propagates through volumes (default: --sam2's)")
    group.add_argument(
        "--propagator-variant", choices=VARIANT_NAMES, metavar="NAME", help="the variant of --propagator"
    )
    group.add_argument(
        "--precision",
        choices=PRECISION_CHOICES,
        default="auto",
        help="the segmenter's arithmetic: auto (bfloat16 where the device computes it natively: a CUDA GPU, a CPU "
        "with AVX-512 BF16 or AMX; float32 otherwise), fp32 or bf16. The prompt decoder stays float32",
    )


def add_training_tool_options(parser: argparse.ArgumentParser) -> None:
    """The click tool of synthesis, evaluation and training: a SAM 2 family model or the random walker."""
    parser.add_argument("--tool", choices=("sam2", "classical"), default="sam2", help="a SAM 2 family model, or none")
    parser.add_argument("--sam2", help="the SAM 2 family checkpoint for --tool sam2 (default as for segment)")
    parser.add_argument("--sam2-variant", choices=VARIANT_NAMES, help="its variant, where the file does not tell")
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto")


def add_limit_options(parser: argparse.ArgumentParser) -> None:
    """The size limit on volumes (segment, serve and web take the same), checked from a file's header."""
    parser.add_argument(
        "--max-voxels",
        type=positive_int,
        default=MAX_VOXELS,
        help=f"refuse volumes with more voxels than this (default {MAX_VOXELS:,}: 512 x 512 x 1024); 2D images "
        f"and each side of a volume are limited to {MAX_DIMENSION} pixels",
    )


def image_limits(args: argparse.Namespace) -> ImageLimits:
    return ImageLimits(max_voxels=args.max_voxels)


def check_writable(flag: str, path: Path) -> None:
    """Refuse before the run an output that could not be written after it."""
    if path.is_dir():
        raise UserError(f"{flag} {path}: is a folder; name a file in it")
    existing = next(parent for parent in path.absolute().parents if parent.exists())
    if not existing.is_dir():
        raise UserError(f"{flag} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK):
        raise UserError(f"{flag} {path}: cannot write in {existing}")


def build_backend(choice: Any, cached_images: int = 16) -> Any:  # BackendChoice -> Backend
    """The backend ``choice`` names (segment, serve, web's start-up checks), saying what it loads or where it
    connects; bad specs, missing weights and an unreachable server are a UserError."""
    from ..models.weights import WeightsUnavailable, mllm_spec, sam2_spec
    from ..policies.errors import PolicyError
    from ..remote.client import RemoteError

    if choice.remote:
        print(f"connecting to {choice.server} ...", file=sys.stderr, flush=True)
    else:
        print(f"loading policy {mllm_spec(choice.mllm)} and segmenter {sam2_spec(choice.sam2)} ...",
              file=sys.stderr, flush=True)  # fmt: skip
    try:
        return choice.build(cached_images=cached_images)
    except (WeightsUnavailable, PolicyError, RemoteError, ValueError) as exc:
        raise UserError(str(exc)) from exc


def model_folder(spec: str) -> Path:
    from ..models.weights import WeightsUnavailable, resolve_mllm_folder

    try:
        return resolve_mllm_folder(spec)
    except WeightsUnavailable as exc:
        raise UserError(str(exc).replace("--mllm", "--model", 1)) from exc
