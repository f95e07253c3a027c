"""Turning ``--mllm`` / ``--sam2`` specs into a ready Policy and SegmentationTool.

Both specs are resolved (paths checked, downloads done, replay files read) before any model is built,
so a typo in the second one never costs the minutes of loading the first.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..agent.interfaces import Policy, SegmentationTool
from ..tools import CheckpointError, SegmenterSpec
from ..tools.resolve import segmenter_named
from .weights import WeightsUnavailable, resolve_mllm_folder

if TYPE_CHECKING:
    from ..agent.backends import LocalBackend

MLLM_MODEL_ENV = "IBISAGENT_MLLM_MODEL"
API_KEY_ENV = "IBISAGENT_API_KEY"


def load_models(
    mllm: str,
    sam2: str,
    device: str = "auto",
    model_name: str | None = None,
    api_key: str | None = None,
    tqdm_class: type | None = None,
    sam2_variant: str | None = None,
    cached_images: int = 16,
    precision: str = "auto",
) -> tuple[Callable[[], Policy], SegmentationTool]:
    """A policy factory and the click tool (a SAM 2 family model: MedSAM2 unless ``sam2``/``sam2_variant``
    say otherwise) at ``precision``, which keeps the embeddings of ``cached_images`` images. Models load here, once; the
    factory hands every session the shared model, except replays, which are per session (each replays the
    file from its start). Both specs are checked before either model loads, and both problems are reported
    together."""
    problems: list[str] = []
    make_policy = segmenter = None
    try:
        make_policy = _policy_factory(mllm, device, model_name, api_key, tqdm_class)
    except WeightsUnavailable as exc:
        problems.append(str(exc))
    try:
        segmenter = segmenter_named(sam2, sam2_variant, tqdm_class)
    except (WeightsUnavailable, CheckpointError) as exc:
        problems.append(str(exc))
    if make_policy is None or segmenter is None:
        raise WeightsUnavailable("\n\n".join(problems))
    return _shared_unless_replay(mllm, make_policy), segmenter.tool(device, cached_images, precision)


def load_backend(
    mllm: str,
    sam2: str,
    device: str = "auto",
    *,
    sam2_variant: str | None = None,
    propagator: str | None = None,
    propagator_variant: str | None = None,
    model_name: str | None = None,
    api_key: str | None = None,
    tqdm_class: type | None = None,
    cached_images: int = 16,
    precision: str = "auto",
) -> LocalBackend:
    """Sessions in this process on these models: the one way the CLI, the server and the front ends load them.
    ``cached_images``: the slice embeddings the click tool keeps (the server keeps one per session it allows)."""
    from ..agent.backends import LocalBackend

    spread = load_propagator(propagator, propagator_variant, tqdm_class) if propagator else None
    policy_factory, tool = load_models(
        mllm, sam2, device, model_name, api_key, tqdm_class, sam2_variant, cached_images, precision
    )
    return LocalBackend(policy_factory, tool, device=device, propagator=spread, precision=precision)


def load_propagator(spec: str, variant: str | None = None, tqdm_class: type | None = None) -> SegmenterSpec:
    """The segmenter that propagates through volumes when it is not the click tool's (resolved, not built:
    it is built on first use)."""
    try:
        return segmenter_named(spec, variant, tqdm_class)
    except CheckpointError as exc:
        raise WeightsUnavailable(str(exc)) from exc


def load_policy_factory(
    mllm: str, device: str = "auto", model_name: str | None = None, api_key: str | None = None, workers: int = 1
) -> Callable[[], Policy]:
    """The policy factory alone (for evaluation with a tool of one's choice). With several ``workers``
    (sessions on several threads) every session gets a client of its own; a model in this process cannot
    serve them at once, so it is refused."""
    make_policy = _policy_factory(mllm, device, model_name, api_key)
    if workers == 1:
        return _shared_unless_replay(mllm, make_policy)
    if not spec_serves_threads(mllm):
        raise ValueError(
            f"{workers} workers need the model behind an OpenAI-compatible endpoint (--mllm http://HOST/v1, e.g. "
            "vLLM), which batches their requests; a model in this process runs one session at a time"
        )
    return make_policy


def _shared_unless_replay(spec: str, make_policy: Callable[[], Policy]) -> Callable[[], Policy]:
    if spec_is_replay(spec):
        return make_policy
    policy = make_policy()
    return lambda: policy


@dataclass(frozen=True)
class PolicyScheme:
    """A kind of ``--mllm`` spec, known by its prefix: how it builds its policy factory, whether every session
    gets a policy of its own (``per_session``), and whether one policy answers sessions on several threads."""

    prefixes: tuple[str, ...]
    build: Callable[[str, PolicySettings], Callable[[], Policy]]
    per_session: bool = False
    serves_threads: bool = False


@dataclass(frozen=True)
class PolicySettings:
    device: str = "auto"
    model_name: str | None = None
    api_key: str | None = None
    tqdm_class: type | None = None


def _replay(spec: str, settings: PolicySettings) -> Callable[[], Policy]:
    from ..policies.replay import ReplayPolicy

    path = spec.removeprefix("replay:")
    outputs = ReplayPolicy.from_file(path).outputs
    return lambda: ReplayPolicy(outputs, source=Path(path).name)


def _oracle(spec: str, settings: PolicySettings) -> Callable[[], Policy]:
    from ..training.oracle import ReferenceOracle

    reference = Path(spec.removeprefix("oracle:")).expanduser()
    if not reference.is_file():
        raise WeightsUnavailable(f"--mllm {spec}: no such reference labelmap or mask file")
    oracle = ReferenceOracle(reference)  # one for all sessions: it reads the reference once
    return lambda: oracle


def _endpoint(spec: str, settings: PolicySettings) -> Callable[[], Policy]:
    from ..policies.openai_http import OpenAIChatPolicy

    return lambda: OpenAIChatPolicy(
        spec,
        model=settings.model_name or os.environ.get(MLLM_MODEL_ENV),
        api_key=settings.api_key or os.environ.get(API_KEY_ENV),
    )


def _local(spec: str, settings: PolicySettings) -> Callable[[], Policy]:
    folder: Path = resolve_mllm_folder(spec, settings.tqdm_class)

    def local() -> Policy:
        from ..policies.transformers_qwen import TransformersQwenPolicy

        return TransformersQwenPolicy(folder, device=settings.device)

    return local


# The policy schemes, tried in order; a spec no prefix matches is a local model folder or a Hugging Face id.
POLICY_SCHEMES = (
    PolicyScheme(("replay:",), _replay, per_session=True, serves_threads=True),
    PolicyScheme(("oracle:",), _oracle, serves_threads=True),
    PolicyScheme(("http://", "https://"), _endpoint, serves_threads=True),
)
LOCAL_MODEL = PolicyScheme((), _local)


def policy_scheme(spec: str) -> PolicyScheme:
    return next((s for s in POLICY_SCHEMES if spec.startswith(s.prefixes)), LOCAL_MODEL)


def spec_is_replay(spec: str) -> bool:
    return policy_scheme(spec).per_session


def spec_serves_threads(spec: str) -> bool:
    """Policies that answer sessions on several threads at once: an endpoint (which batches them), a replay (one
    per session) and the oracle; a model in this process answers one at a time."""
    return policy_scheme(spec).serves_threads


def _policy_factory(
    spec: str, device: str, model_name: str | None, api_key: str | None, tqdm_class: type | None = None
) -> Callable[[], Policy]:
    return policy_scheme(spec).build(spec, PolicySettings(device, model_name, api_key, tqdm_class))
