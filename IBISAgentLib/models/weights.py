"""Where model weights come from: a local path or a Hugging Face repo (downloaded with progress and
cached by huggingface_hub), with one clear paragraph when neither is at hand."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MLLM = "manglu3935/IBIS:qwen2_5vl-7b-RL"
DEFAULT_SAM2 = "wanglab/MedSAM2:MedSAM2_latest.pt"
MLLM_ENV = "IBISAGENT_MLLM"
SAM2_ENV = "IBISAGENT_SAM2"

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(:[^:]+)?$")


class WeightsUnavailable(Exception):
    """Weights that are neither on disk nor downloadable; the message says what to fetch and where."""


@dataclass(frozen=True)
class HubRef:
    """``owner/repo:path`` — a folder (MLLM) or a file (MedSAM2) inside a Hugging Face model repo."""

    repo: str
    path: str | None

    @classmethod
    def parse(cls, spec: str) -> HubRef:
        repo, _, path = spec.partition(":")
        return cls(repo, path or None)

    def __str__(self) -> str:
        return f"{self.repo}:{self.path}" if self.path else self.repo


def mllm_spec(cli_value: str | None) -> str:
    return cli_value or os.environ.get(MLLM_ENV) or DEFAULT_MLLM


def sam2_spec(cli_value: str | None) -> str:
    return cli_value or os.environ.get(SAM2_ENV) or DEFAULT_SAM2


def is_hub_ref(spec: str) -> bool:
    return not Path(spec).exists() and bool(_HUB_ID.match(spec)) and not spec.startswith((".", "/", "~"))


def resolve_mllm_folder(spec: str, tqdm_class: type | None = None) -> Path:
    """A local Qwen2.5-VL folder (with config.json) for a path or a hub reference. ``tqdm_class`` receives
    download progress (a UI can show it; the default prints bars on the terminal)."""
    if is_hub_ref(spec):
        ref = HubRef.parse(spec)
        folder = _download(ref, folder=True, flag="--mllm", env=MLLM_ENV, tqdm_class=tqdm_class)
    else:
        folder = Path(spec).expanduser()
        if not folder.exists():
            raise WeightsUnavailable(f"--mllm {spec}: no such folder, and not a Hugging Face id (owner/repo:folder)")
    if not (folder / "config.json").is_file():
        raise WeightsUnavailable(f"--mllm {folder}: not a model folder (no config.json inside)")
    if not any(folder.glob("*.safetensors")):
        pickled = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        found = f"it holds {', '.join(pickled[:3])}, pickle files, which are never loaded" if pickled else "none"
        raise WeightsUnavailable(
            f"--mllm {folder}: no safetensors weights ({found}); save the model with "
            "save_pretrained(..., safe_serialization=True) on a machine you trust"
        )
    return folder


def resolve_sam2_file(spec: str, tqdm_class: type | None = None) -> Path:
    """A local MedSAM2 checkpoint file for a path or a hub reference."""
    if is_hub_ref(spec):
        ref = HubRef.parse(spec)
        if not ref.path:
            raise WeightsUnavailable(f"--sam2 {spec}: name the checkpoint file, e.g. {DEFAULT_SAM2}")
        return _download(ref, folder=False, flag="--sam2", env=SAM2_ENV, tqdm_class=tqdm_class)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise WeightsUnavailable(f"--sam2 {spec}: no such checkpoint file, and not a Hugging Face id (owner/repo:file)")
    return path


def _download(ref: HubRef, folder: bool, flag: str, env: str, tqdm_class: type | None = None) -> Path:
    from huggingface_hub import hf_hub_download, snapshot_download

    progress = {"tqdm_class": tqdm_class} if tqdm_class is not None else {}
    try:
        if folder:
            patterns = [f"{ref.path}/*"] if ref.path else None
            root = Path(snapshot_download(ref.repo, allow_patterns=patterns, **progress))
            return root / ref.path if ref.path else root
        return Path(hf_hub_download(ref.repo, ref.path, **progress))
    except Exception as exc:  # offline, DNS failure, gated repo, missing file: all end the same way
        reason = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise WeightsUnavailable(
            f"The weights {ref} are not in the Hugging Face cache and could not be downloaded ({reason}). "
            f"{how_to_fetch(ref, folder, flag, env)}"
        ) from exc


def how_to_fetch(ref: HubRef, folder: bool, flag: str, env: str | None) -> str:
    """The commands that bring ``ref`` to an offline machine, and the option that then names it."""
    include = f" --include '{ref.path}/*'" if folder and ref.path else (f" {ref.path}" if ref.path else "")
    local = f"DIR/{ref.path}" if ref.path else "DIR"
    return (
        f"On a machine with internet access run\n    hf download {ref.repo}{include} --local-dir DIR\n"
        f"copy DIR to this machine, then pass {flag} {local}" + (f" or set {env}={local}." if env else ".")
    )


def in_cache(ref: HubRef, folder: bool) -> bool:
    """Whether ``ref`` is in this computer's Hugging Face cache; never uses the network, so a page can ask
    at once (a download attempt offline takes tens of seconds to fail)."""
    from huggingface_hub import hf_hub_download, snapshot_download

    try:
        if folder:
            root = Path(snapshot_download(ref.repo, local_files_only=True))
            return (root / (ref.path or "") / "config.json").is_file()
        return Path(hf_hub_download(ref.repo, ref.path, local_files_only=True)).is_file()
    except Exception:  # not cached (LocalEntryNotFoundError), or a cache we cannot read: both mean "download"
        return False


class DownloadProgress:
    """Weight downloads made on a worker thread, as the latest report a UI thread shows: ``latest`` (name, done,
    total, unit) for a progress bar, ``text`` for a status line. One attribute written whole: no lock needed."""

    def __init__(self) -> None:
        self.latest: tuple[str, float, float, str] | None = None

    @property
    def text(self) -> str:
        if self.latest is None:
            return ""
        name, done, total, unit = self.latest
        if unit == "B":
            return f"Downloading {name}: {done / 2**20:.0f} of {total / 2**20:.0f} MiB"
        return f"Downloading {name}: {done} of {total or '?'} {unit}"

    def clear(self) -> None:
        self.latest = None

    def tqdm_class(self) -> type:
        from tqdm.auto import tqdm

        progress = self

        class Reporting(tqdm):
            def update(self, n: float | None = 1) -> bool | None:
                shown = super().update(n)
                progress.latest = (self.desc or "model weights", self.n, self.total or 0, self.unit)
                return shown

        return Reporting
