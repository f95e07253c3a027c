"""Building a SAM 2 family network through the sam2 package's own config machinery, loading its checkpoint
(weights only, shapes checked first), and telling the variants apart by their tensors.

torch and sam2 are imported inside the functions, so importing this module stays light.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from .variants import VARIANTS, SAM2Variant


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into the chosen (or any) SAM 2 family architecture."""


def build_model(
    variant: SAM2Variant,
    checkpoint: str | Path | None,
    device: str,
    video: bool = False,
    stock: bool = False,
    precision: str = "fp32",
) -> Any:
    """The network (``video=True``: sam2's video predictor, for propagation) with the checkpoint's weights,
    or random weights without one. The checkpoint is a ``{"model": state_dict}`` file as the released ones
    are, read with ``weights_only=True``; it must match the architecture key for key. The network is for
    inference at ``precision`` (resolved: ``fp32`` or ``bf16``): its per-image constant work is done once
    (``sam2_speed``), unless ``stock`` asks for it as sam2 builds it (what tests and benchmarks compare
    against). Under ``bf16`` a propagation runs wholly under autocast, a click tool only its image encoder
    (its prompt decoder runs in float32): those parts keep their weights in bfloat16."""
    from .sam2_speed import speed_up

    model = _instantiate(variant, video)
    if checkpoint is not None:
        load_checkpoint(model, Path(checkpoint), variant)
    model = model.to(device).eval()
    if stock:
        return model
    autocast_only = (model if video else model.image_encoder) if precision == "bf16" else None
    return speed_up(model, device, autocast_only)


def _instantiate(variant: SAM2Variant, video: bool) -> Any:
    import sam2  # noqa: F401  (registers sam2's config module with hydra)
    from sam2.build_sam import build_sam2, build_sam2_video_predictor

    build = build_sam2_video_predictor if video else build_sam2
    return build(variant.config, ckpt_path=None, device="cpu", hydra_overrides_extra=variant.overrides())


def read_state(path: Path) -> dict[str, Any]:
    import torch

    if not path.is_file():
        raise CheckpointError(f"{path}: no such SAM 2 checkpoint file")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        raise CheckpointError(f"{path}: not a readable weights-only torch checkpoint ({exc})") from exc
    state = content.get("model", content) if isinstance(content, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict with a 'model' state dict")
    return state


def load_checkpoint(model: Any, path: Path, variant: SAM2Variant) -> None:
    state = read_state(path)
    expected = model.state_dict()
    wrong = [
        f"{key} {tuple(value.shape)} (expected {tuple(expected[key].shape)})"
        for key, value in state.items()
        if key in expected and hasattr(value, "shape") and value.shape != expected[key].shape
    ]
    if wrong:  # load_state_dict would raise torch's "size mismatch" for these, strict or not
        raise CheckpointError(
            f"{path}: does not match {variant.title} ({variant.image_size} px): {len(wrong)} tensors have other "
            f"shapes (e.g. {'; '.join(wrong[:2])}): is it another model's checkpoint?"
        )
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{path}: does not match {variant.title} ({variant.image_size} px): "
            f"{len(result.missing_keys)} missing keys (e.g. {result.missing_keys[:3]}), "
            f"{len(result.unexpected_keys)} unexpected keys (e.g. {result.unexpected_keys[:3]})"
        )


@functools.cache
def signature(variant: SAM2Variant) -> frozenset[tuple[str, tuple[int, ...]]]:
    """The variant's tensors (name, shape), from its architecture built with random weights."""
    model = _instantiate(variant, video=False)
    return frozenset((key, tuple(value.shape)) for key, value in model.state_dict().items())


@functools.cache
def _trunk(variant: SAM2Variant) -> tuple[int, int]:
    """(embedding width, blocks) of the variant's image encoder, read from its config without building it."""
    import inspect

    import sam2  # noqa: F401  (registers sam2's config module with hydra)
    from hydra import compose
    from sam2.modeling.backbones.hieradet import Hiera

    trunk = compose(config_name=variant.config).model.image_encoder.trunk
    stages = trunk.get("stages", inspect.signature(Hiera).parameters["stages"].default)  # b+ keeps Hiera's default
    return int(trunk.embed_dim), int(sum(stages))


def _trunk_of(state: dict[str, Any]) -> tuple[int, int] | None:
    patch = state.get("image_encoder.trunk.patch_embed.proj.weight")
    blocks = {key.split(".")[3] for key in state if key.startswith("image_encoder.trunk.blocks.")}
    if patch is None or not hasattr(patch, "shape") or not all(b.isdigit() for b in blocks):
        return None
    return int(patch.shape[0]), len(blocks)


def detect(state: dict[str, Any], path: Path) -> SAM2Variant:
    """The variant whose tensors the checkpoint holds. MedSAM2 and SAM 2.1 hiera-t have the same tensors at
    different image sizes: between them the file name decides (MedSAM2_latest.pt, sam2.1_hiera_tiny.pt, or
    one containing a variant's name). Still several, or none: a CheckpointError naming the candidates. Only
    variants with the checkpoint's image-encoder size are built to compare."""
    held = frozenset((key, tuple(value.shape)) for key, value in state.items() if hasattr(value, "shape"))
    trunk = _trunk_of(state)
    sized = [v for v in VARIANTS if _trunk(v) == trunk]
    fits = [v for v in sized if signature(v) == held]
    named = [v for v in fits if v.name in path.stem.lower() or Path(v.hub_file).stem.lower() in path.stem.lower()]
    if len(fits) == 1 or len(named) == 1:
        return fits[0] if len(fits) == 1 else named[0]
    if fits:
        raise CheckpointError(
            f"{path}: its tensors fit {' or '.join(v.name for v in fits)} (the same weights at different image "
            "sizes) and its file name does not say which: say it with --sam2-variant"
        )
    if not sized:
        raise CheckpointError(f"{path}: not a SAM 2 family checkpoint (its image encoder is none of theirs)")
    closest = min(sized, key=lambda v: len(signature(v) ^ held))
    raise CheckpointError(
        f"{path}: its tensors fit no SAM 2 family variant (closest: {closest.name}, "
        f"{len(signature(closest) ^ held)} tensors differ): name the variant with --sam2-variant if it is one"
    )
