"""The segmenter's precision: ``auto`` is bfloat16 where the device computes it natively, the choice reaches
the click tool, the propagator and the trace, and bfloat16 agrees with float32 on the same inputs (random
weights make near-zero logits coin flips, so agreement is measured where float32 is far from 0)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from test_cli import SAMPLE, ibisagent, replay_file
from volume_data import ct_phantom

from IBISAgentLib.agent.interfaces import Click
from IBISAgentLib.imaging.geometry import SliceGeometry
from IBISAgentLib.imaging.windowing import apply_window, choose_window
from IBISAgentLib.models.devices import cpu_computes_bf16, resolve_precision
from IBISAgentLib.tools.click_tool import SAM2Tool
from IBISAgentLib.tools.propagation import PropagationOptions, SAM2Propagator

CLICKS = [Click(60, 50, True), Click(20, 20, False)]


def cpu_flags() -> set[str]:
    text = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    return set(next(line for line in text.splitlines() if line.startswith("flags")).split(":", 1)[1].split())


def test_auto_is_bfloat16_where_the_device_computes_it_natively():
    native = bool({"avx512_bf16", "amx_bf16"} & cpu_flags())
    assert cpu_computes_bf16() is native
    assert resolve_precision("auto", "cpu") == ("bf16" if native else "fp32")
    assert resolve_precision("auto", "cuda") == resolve_precision("auto", "cuda:1") == "bf16"
    assert [resolve_precision(p, "cpu") for p in ("fp32", "bf16")] == ["fp32", "bf16"]
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        resolve_precision("fp16", "cpu")


def test_bfloat16_clicks_agree_with_float32(tiny_models, sample_image):
    logits = {}
    for precision in ("fp32", "bf16"):
        tool = SAM2Tool(tiny_models[1], "cpu", precision=precision)
        assert tool.identity()["tool_precision"] == precision and tool.identity()["tool_device"] == "cpu"
        tool.set_image(sample_image)
        logits[precision] = tool.predict(CLICKS, None).logits
    fp32, bf16 = logits["fp32"], logits["bf16"]
    assert np.linalg.norm(bf16 - fp32) / np.linalg.norm(fp32) < 0.03  # measured: 0.8 %
    far = np.abs(fp32) > np.median(np.abs(fp32))
    assert np.mean((fp32 > 0)[far] == (bf16 > 0)[far]) > 0.995  # measured: 100 %
    assert not np.array_equal(fp32, bf16)  # bfloat16 really ran


def test_bfloat16_propagation_agrees_with_float32(tiny_models):
    volume = ct_phantom((5, 48, 48))
    windowed = apply_window(volume, choose_window(volume, None))
    key = SliceGeometry.of(sitk.GetImageFromArray(volume), "axial", 2)
    key_mask = np.zeros((48, 48), bool)
    key_mask[14:34, 14:34] = True
    masks = {
        precision: SAM2Propagator(tiny_models[1], "cpu", precision=precision)
        .propagate(windowed, key, key_mask, PropagationOptions(None, None, 0, False))
        .mask
        for precision in ("fp32", "bf16")
    }
    union = (masks["fp32"] | masks["bf16"]).sum()
    assert union > 0 and (masks["fp32"] & masks["bf16"]).sum() / union > 0.98  # measured: 0.9999


def test_the_trace_records_the_precision_and_the_device(tmp_path, tiny_models):
    outputs = ["<think>x</think><action>Positive Point (0.5000, 0.5000)</action>", "<action>Terminate</action>"]
    for asked, expected in (("auto", resolve_precision("auto", "cpu")), ("fp32", "fp32")):
        result = ibisagent(
            "segment", SAMPLE, "--prompt", "segment the vertebral body", "--mllm", replay_file(tmp_path, outputs),
            "--sam2", tiny_models[1], "--device", "cpu", "--precision", asked, "--trace", tmp_path / "trace.json",
            "--out", tmp_path / "mask.png",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        models = json.loads((tmp_path / "trace.json").read_text(encoding="utf-8"))["models"]
        assert (models["tool_precision"], models["tool_device"]) == (expected, "cpu")
    refused = ibisagent("segment", SAMPLE, "--prompt", "x", "--precision", "fp16")
    assert refused.returncode == 2 and "invalid choice: 'fp16'" in refused.stderr
