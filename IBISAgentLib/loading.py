"""Turning ``--mllm`` / ``--sam2`` specs into a ready Policy and SegmentationTool.

Both specs are resolved (paths checked, downloads done, replay files read) before any model is built,
so a typo in the second one never costs the minutes of loading the first.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .interfaces import Policy, SegmentationTool
from .weights import WeightsUnavailable, resolve_mllm_folder, resolve_sam2_file

MLLM_MODEL_ENV = "IBISAGENT_MLLM_MODEL"
API_KEY_ENV = "IBISAGENT_API_KEY"


def load_models(
    mllm: str,
    sam2: str,
    device: str = "auto",
    model_name: str | None = None,
    api_key: str | None = None,
    tqdm_class: type | None = None,
) -> tuple[Callable[[], Policy], SegmentationTool]:
    """A policy factory and the MedSAM2 tool. Models load here, once; the factory hands every session
    the shared model, except replays, which are per session (each replays the file from its start).
    Both specs are checked before either model loads, and both problems are reported together."""
    problems: list[str] = []
    make_policy = checkpoint = None
    try:
        make_policy = _policy_factory(mllm, device, model_name, api_key, tqdm_class)
    except WeightsUnavailable as exc:
        problems.append(str(exc))
    try:
        checkpoint = resolve_sam2_file(sam2, tqdm_class)
    except WeightsUnavailable as exc:
        problems.append(str(exc))
    if make_policy is None or checkpoint is None:
        raise WeightsUnavailable("\n\n".join(problems))
    from .medsam2 import MedSAM2Tool

    tool = MedSAM2Tool(checkpoint, device=device)
    return _shared_unless_replay(mllm, make_policy), tool


def load_policy_factory(
    mllm: str, device: str = "auto", model_name: str | None = None, api_key: str | None = None
) -> Callable[[], Policy]:
    """The policy factory alone (for evaluation with a tool of one's choice)."""
    return _shared_unless_replay(mllm, _policy_factory(mllm, device, model_name, api_key))


def _shared_unless_replay(spec: str, make_policy: Callable[[], Policy]) -> Callable[[], Policy]:
    if spec_is_replay(spec):
        return make_policy
    policy = make_policy()
    return lambda: policy


def spec_is_replay(spec: str) -> bool:
    return spec.startswith("replay:")


def _policy_factory(
    spec: str, device: str, model_name: str | None, api_key: str | None, tqdm_class: type | None = None
) -> Callable[[], Policy]:
    """``replay:FILE.json``, ``http(s)://host/v1`` (OpenAI-compatible), a local folder or a hub id."""
    if spec_is_replay(spec):
        from .policies.replay import ReplayPolicy

        outputs = ReplayPolicy.from_file(spec.removeprefix("replay:")).outputs
        return lambda: ReplayPolicy(outputs, source=Path(spec.removeprefix("replay:")).name)
    if spec.startswith(("http://", "https://")):
        from .policies.openai_http import OpenAIChatPolicy

        return lambda: OpenAIChatPolicy(
            spec,
            model=model_name or os.environ.get(MLLM_MODEL_ENV),
            api_key=api_key or os.environ.get(API_KEY_ENV),
        )
    folder: Path = resolve_mllm_folder(spec, tqdm_class)

    def local() -> Policy:
        from .policies.transformers_qwen import TransformersQwenPolicy

        return TransformersQwenPolicy(folder, device=device)

    return local
