"""Turning ``--mllm`` / ``--sam2`` specs into a ready Policy and SegmentationTool."""

from __future__ import annotations

import os

from .interfaces import Policy, SegmentationTool
from .weights import resolve_mllm_folder, resolve_sam2_file

MLLM_MODEL_ENV = "IBISAGENT_MLLM_MODEL"
API_KEY_ENV = "IBISAGENT_API_KEY"


def load_policy(spec: str, device: str = "auto", model_name: str | None = None, api_key: str | None = None) -> Policy:
    """``replay:FILE.json``, ``http(s)://host/v1`` (OpenAI-compatible), a local folder or a hub id."""
    if spec.startswith("replay:"):
        from .policies.replay import ReplayPolicy

        return ReplayPolicy.from_file(spec.removeprefix("replay:"))
    if spec.startswith(("http://", "https://")):
        from .policies.openai_http import OpenAIChatPolicy

        return OpenAIChatPolicy(
            spec,
            model=model_name or os.environ.get(MLLM_MODEL_ENV),
            api_key=api_key or os.environ.get(API_KEY_ENV),
        )
    from .policies.transformers_qwen import TransformersQwenPolicy

    return TransformersQwenPolicy(resolve_mllm_folder(spec), device=device)


def load_tool(spec: str, device: str = "auto") -> SegmentationTool:
    """MedSAM2 from a checkpoint path or hub id."""
    from .medsam2 import MedSAM2Tool

    return MedSAM2Tool(resolve_sam2_file(spec), device=device)
