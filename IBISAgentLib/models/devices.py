"""Choosing the compute device and the segmenter's precision. Imports torch only when called."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Any

DEVICE_CHOICES = ("auto", "cpu", "cuda")
PRECISION_CHOICES = ("auto", "fp32", "bf16")


def resolve_device(requested: str = "auto") -> str:
    """``auto`` picks CUDA when torch sees a GPU, else the CPU; ``cuda`` without a GPU is an error."""
    import torch

    if requested not in DEVICE_CHOICES and not requested.startswith("cuda:"):
        raise ValueError(f"unknown device {requested!r}: use one of {', '.join(DEVICE_CHOICES)}")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA GPU on this machine")
    return requested


@functools.cache
def cpu_computes_bf16() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX-512 BF16, or AMX on recent Intel), read once from
    /proc/cpuinfo; elsewhere (no such file) no: bfloat16 emulated in float32 is slower than float32."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return bool({"avx512_bf16", "amx_bf16"} & set(flags))


def resolve_precision(requested: str, device: str) -> str:
    """``fp32`` or ``bf16`` for a resolved ``device``: ``auto`` is bfloat16 where the device computes it natively
    (CUDA; a CPU with AVX-512 BF16 or AMX), float32 otherwise."""
    if requested not in PRECISION_CHOICES:
        raise ValueError(f"unknown precision {requested!r}: use one of {', '.join(PRECISION_CHOICES)}")
    if requested != "auto":
        return requested
    return "bf16" if device.startswith("cuda") or (device == "cpu" and cpu_computes_bf16()) else "fp32"


def autocast(device: str, precision: str) -> Any:
    """The context a model runs in at ``precision``: bfloat16 autocast, or nothing. (The SAM 2 family networks
    hold in bfloat16 the weights that only ever meet autocast, which rounds them the same way: ``sam2_speed``.)

    Autocast's cache of bfloat16 weight copies is off: an image meets each weight once, so the cache saved no
    time and only held the copies until the image was done (45 MB at a CPU embedding's peak, measured before the
    encoder's weights were held in bfloat16)."""
    if precision != "bf16":
        return contextlib.nullcontext()
    import torch

    kind = "cuda" if device.startswith("cuda") else "cpu"
    return torch.autocast(kind, dtype=torch.bfloat16, cache_enabled=False)
