"""Which backend runs the sessions, as one value every front end builds its backend from: the command line
(``segment``, ``serve``, ``web``), the web app and the Slicer module. Front ends store it (without secrets) and
compare it; ``build()`` is the one place a backend is made from it."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

from ..agent.backends import Backend

STORED = ("server", "mllm", "sam2", "sam2_variant", "propagator", "propagator_variant", "device", "precision")


@dataclass(frozen=True)
class BackendChoice:
    """Local models (``server`` None) or a server URL, with the models to load locally.

    ``mllm`` is a policy spec (a model folder or Hugging Face id, ``http(s)://`` endpoint, ``replay:``,
    ``oracle:``; see ``models.loading.POLICY_SCHEMES``), ``sam2`` a segmenter spec (``classical``, a variant's
    name, a checkpoint; see ``tools.resolve.segmenter_named``); None takes the defaults. The token and the
    endpoint's API key take part in comparisons (a new one means a new connection) but never in
    ``settings()``, which is what front ends write to disk."""

    server: str | None = None
    mllm: str | None = None
    sam2: str | None = None
    sam2_variant: str | None = None
    propagator: str | None = None
    propagator_variant: str | None = None
    device: str = "auto"
    precision: str = "auto"  # the segmenter's: auto, fp32 or bf16 (models.devices.resolve_precision)
    token: str | None = field(default=None, repr=False)
    mllm_model: str | None = None  # the model name at an http(s) endpoint
    api_key: str | None = field(default=None, repr=False)
    ca_bundle: str | None = None  # the CA certificates to verify the server's TLS with

    @property
    def remote(self) -> bool:
        return self.server is not None

    def settings(self) -> dict[str, str]:
        """The choice as strings to store; never the token."""
        return {name: getattr(self, name) or "" for name in STORED}

    @classmethod
    def from_settings(cls, settings: dict[str, Any], token: str | None = None) -> BackendChoice:
        values = {name: str(settings.get(name) or "").strip() or None for name in STORED}
        defaults = {"device": values["device"] or "auto", "precision": values["precision"] or "auto"}
        return cls(**{**values, **defaults}, token=token or None)

    @classmethod
    def from_arguments(cls, args: argparse.Namespace, token: str | None = None) -> BackendChoice:
        """From a command's model options (``cli.options.add_segmenter_options`` and the policy's flags; a
        command without ``--server``, ``--mllm-model``, ``--api-key`` or ``--ca-bundle`` has them None)."""
        from ..tools import SETTINGS

        def given(name: str) -> Any:
            return vars(args).get(name)

        return cls(
            server=given("server"),
            mllm=given("mllm"),
            sam2=SETTINGS[args.setting] if given("setting") else given("sam2"),
            sam2_variant=given("sam2_variant"),
            propagator=given("propagator"),
            propagator_variant=given("propagator_variant"),
            device=given("device") or "auto",
            precision=given("precision") or "auto",
            token=token,
            mllm_model=given("mllm_model"),
            api_key=given("api_key"),
            ca_bundle=given("ca_bundle"),
        )

    def describe(self) -> str:
        return f"server {self.server}" if self.remote else f"this computer ({self.mllm or 'default model'})"

    def missing_weights(self) -> list[str]:
        """For each model this choice would have to download, what it is and how to fetch it (empty: all at
        hand, or nothing to download: a server, an endpoint, a replay, a local file, the classical segmenter).
        Looks in the local cache only, so it answers at once."""
        if self.remote:
            return []
        from ..models import weights as w
        from ..models.loading import LOCAL_MODEL, policy_scheme
        from ..tools.resolve import hub_file_of

        wanted: list[tuple[w.HubRef, bool, str, str | None]] = []
        mllm = w.mllm_spec(self.mllm)
        if policy_scheme(mllm) is LOCAL_MODEL and w.is_hub_ref(mllm):
            wanted.append((w.HubRef.parse(mllm), True, "--mllm", w.MLLM_ENV))
        segmenters = ((w.sam2_spec(self.sam2), "--sam2", w.SAM2_ENV), (self.propagator, "--propagator", None))
        for spec, flag, env in segmenters:
            ref = hub_file_of(spec) if spec else None
            if ref is not None:
                wanted.append((ref, False, flag, env))
        return [f"{ref} ({flag}) is not on this computer. {w.how_to_fetch(ref, folder, flag, env)}"
                for ref, folder, flag, env in wanted if not w.in_cache(ref, folder)]  # fmt: skip

    def build(self, tqdm_class: Any = None, cached_images: int = 16) -> Backend:
        """Connect to the server, or load the local models (``tqdm_class`` reports weight downloads; the click
        tool keeps ``cached_images`` slice embeddings)."""
        if self.remote:
            from ..remote.client import RemoteBackend

            return RemoteBackend(self.server, token=self.token, verify=self.ca_bundle or True)
        from ..models.loading import load_backend
        from ..models.weights import mllm_spec, sam2_spec

        return load_backend(
            mllm_spec(self.mllm), sam2_spec(self.sam2), self.device, sam2_variant=self.sam2_variant,
            propagator=self.propagator, propagator_variant=self.propagator_variant, model_name=self.mllm_model,
            api_key=self.api_key, tqdm_class=tqdm_class, cached_images=cached_images, precision=self.precision,
        )  # fmt: skip
