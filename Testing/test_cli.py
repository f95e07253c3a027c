"""End-to-end runs of the ``ibisagent`` command, as a user types it, with the tiny models."""

import json
import os
import subprocess
import sys

import jsonschema
import numpy as np
import pytest
from conftest import SAMPLE
from PIL import Image

from IBISAgentLib.agent.trace import SCHEMA_PATH

SCHEMA = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def ibisagent(*args, cwd=None, env=None):
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "IBISAgentLib", *map(str, args)],
        capture_output=True,
        text=True,
        encoding="utf-8",  # what the child writes (once slicer-core is imported here, the locale says ASCII)
        cwd=cwd,
        env=environment,
        timeout=600,
    )


def replay_file(tmp_path, outputs):
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(outputs))
    return f"replay:{path}"


def test_segment_with_replay_and_tiny_medsam2(tmp_path, tiny_models):
    outputs = [
        "<think>vertebra centre</think><action>Positive Point (0.4500, 0.2300)</action>",
        "<think>leak</think><action>Negative Point (0.8000, 0.2000)</action>",
        "<think>good</think><action>Terminate</action><answer>Vertebral body outlined.</answer>",
    ]
    result = ibisagent(
        "segment",
        SAMPLE,
        "--prompt",
        "segment the vertebral body",
        "--mllm",
        replay_file(tmp_path, outputs),
        "--sam2",
        tiny_models[1],
        "--out",
        tmp_path / "mask.png",
        "--trace",
        tmp_path / "trace.json",
        "--overlays",
        tmp_path / "overlays",
    )
    assert result.returncode == 0, result.stderr
    assert "step 1 (agent): Positive Point (0.4500, 0.2300) -> pixel 58,29" in result.stdout
    assert "think: leak" in result.stdout and "answer: Vertebral body outlined." in result.stdout
    assert "Traceback" not in result.stderr
    mask = np.asarray(Image.open(tmp_path / "mask.png"))
    assert mask.shape == (128, 128) and set(np.unique(mask)) <= {0, 255}
    trace = json.loads((tmp_path / "trace.json").read_text(encoding="utf-8"))
    jsonschema.validate(trace, SCHEMA)
    assert trace["stop_reason"] == "terminate" and trace["answer"] == "Vertebral body outlined."
    assert [s["pixel"] for s in trace["steps"]] == [[58, 29], [102, 26], None]
    assert trace["steps"][1]["mask_area"] == int((mask > 0).sum())
    assert sorted(p.name for p in (tmp_path / "overlays").iterdir()) == ["step_01.png", "step_02.png", "step_03.png"]


def test_segment_with_the_tiny_qwen_runs_the_real_generation_path(tmp_path, tiny_models):
    result = ibisagent(
        "segment",
        SAMPLE,
        "--prompt",
        "segment the vertebral body",
        "--mllm",
        tiny_models[0],
        "--sam2",
        tiny_models[1],
        "--max-turns",
        "2",
        "--jsonl",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    steps = [json.loads(line) for line in result.stdout.splitlines()]
    assert steps and all(step["source"] == "agent" and step["raw"] is not None for step in steps)
    trace = json.loads((tmp_path / "ct_thoracic_vertebra_trace.json").read_text(encoding="utf-8"))
    jsonschema.validate(trace, SCHEMA)
    assert trace["steps"] == steps
    assert trace["models"]["policy"].startswith("Qwen2.5-VL")
    assert Image.open(tmp_path / "ct_thoracic_vertebra_mask.png").size == (128, 128)


@pytest.mark.parametrize(
    ("make_args", "reason"),
    [
        (lambda t, m: [t / "missing.png", "--prompt", "x"], "no such image file"),
        (lambda t, m: [t / "empty.png", "--prompt", "x"], "cannot read as an image"),
        (lambda t, m: [SAMPLE, "--prompt", "   "], "--prompt is empty"),
        (
            lambda t, m: [SAMPLE, "--prompt", "x", "--initial-mask", t / "small.png"],
            "mask is 10x10 pixels but the image is 128x128",
        ),
        (lambda t, m: [SAMPLE, "--prompt", "x", "--mllm", t / "nowhere"], "no such folder"),
        (
            lambda t, m: [SAMPLE, "--prompt", "x", "--mllm", m[0], "--sam2", t / "empty.png"],
            "not a readable weights-only",
        ),
        (
            lambda t, m: [SAMPLE, "--prompt", "x", "--mllm", "replay:" + str(t / "missing.json"), "--sam2", m[1]],
            "cannot read JSON",
        ),
        (lambda t, m: [SAMPLE, "--prompt", "x", "--max-turns", "0"], "must be at least 1"),
        (lambda t, m: [SAMPLE, "--prompt", "x", "--click", "3,4,*"], "use X,Y or X,Y,+ or X,Y,-"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, tiny_models, make_args, reason):
    (tmp_path / "empty.png").write_bytes(b"")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "small.png")
    result = ibisagent("segment", *make_args(tmp_path, tiny_models), cwd=tmp_path)
    assert result.returncode == 2
    assert reason in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.glob("*_trace.json"))


def test_missing_released_weights_offline_exit_2_with_instructions(tmp_path):
    result = ibisagent("segment", SAMPLE, "--prompt", "x", cwd=tmp_path, env={"HF_HOME": str(tmp_path / "hf")})
    assert result.returncode == 2
    assert "hf download manglu3935/IBIS --include 'qwen2_5vl-7b-RL/*' --local-dir DIR" in result.stderr
    assert "hf download wanglab/MedSAM2 MedSAM2_latest.pt --local-dir DIR" in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_falls_back_loudly_to_tiny_models(tmp_path):
    result = ibisagent("demo", "--workdir", tmp_path, env={"HF_HOME": str(tmp_path / "hf")})
    assert result.returncode == 0, result.stderr
    assert "RELEASED WEIGHTS NOT AVAILABLE" in result.stderr and "MEANINGLESS" in result.stderr
    assert "hf download manglu3935/IBIS" in result.stderr
    trace = json.loads((tmp_path / "demo" / "trace.json").read_text(encoding="utf-8"))
    jsonschema.validate(trace, SCHEMA)
    assert trace["instruction"] == "segment the vertebral body"
    assert (tmp_path / "demo" / "mask.png").is_file()
    user = [s for s in trace["steps"] if s["source"] == "user"]
    assert user and user[0]["pixel"] == [57, 27] and user[0]["score"] is not None  # MedSAM2 answered the click
    assert (tmp_path / "tiny-models" / "mllm" / "config.json").is_file()


def test_scripted_corrections_after_the_agent(tmp_path, tiny_models):
    outputs = [
        "<think>t</think><action>Positive Point (0.4500, 0.2300)</action>",
        "<action>Terminate</action><answer>ok</answer>",
    ]
    base = ["segment", SAMPLE, "--prompt", "x", "--mllm", replay_file(tmp_path, outputs), "--sam2", tiny_models[1]]
    result = ibisagent(*base, "--click", "100,20,-", "--click", "10,10", "--trace", tmp_path / "t.json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    steps = json.loads((tmp_path / "t.json").read_text(encoding="utf-8"))["steps"]
    assert [(s["source"], s["pixel"], s["action"]["kind"]) for s in steps[2:]] == [
        ("user", [100, 20], "negative"),
        ("user", [10, 10], "positive"),
    ]
    (tmp_path / "ct_thoracic_vertebra_mask.png").unlink()
    outside = ibisagent(*base, "--click", "500,3", cwd=tmp_path)
    assert outside.returncode == 2 and "--click 500,3: outside the 128x128 image" in outside.stderr
    assert "step 1" not in outside.stdout and "loading" not in outside.stderr  # refused before any model ran
    assert not (tmp_path / "ct_thoracic_vertebra_mask.png").exists()
