"""``ibisagent segment --server URL`` gives what the same run gives in-process."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import SAMPLE
from PIL import Image
from server_process import ServerProcess
from test_cli import ibisagent
from volume_data import mni_crop

from IBISAgentLib.tools.propagation import PropagationOptions

OUTPUTS = [
    "<think>a</think><action>Positive Point (0.4500, 0.5200)</action>",
    "<think>b</think><action>Negative Point (0.9000, 0.1000)</action>",
    "<think>c</think><action>Positive Point (0.5500, 0.4800)</action>",
    "<think>d</think><action>Terminate</action><answer>Done.</answer>",
]


@pytest.fixture(scope="module")
def replay(tmp_path_factory):
    path = tmp_path_factory.mktemp("replay") / "outputs.json"
    path.write_text(json.dumps(OUTPUTS))
    return path


@pytest.fixture(scope="module")
def server(tiny_models, replay):
    with ServerProcess("--mllm", f"replay:{replay}", "--sam2", str(tiny_models[1])) as process:
        yield process


def comparable(trace_path):
    trace = json.loads(trace_path.read_text(encoding="utf-8"))
    for step in trace["steps"] + trace["undone"]:
        step.pop("timings_ms")
    trace.pop("models")
    return trace


def run_both(tmp_path, server, tiny_models, replay, source, suffix, extra=()):
    results = {}
    for where in ("local", "remote"):
        out, trace = tmp_path / f"{where}{suffix}", tmp_path / f"{where}.json"
        args = ["segment", source, "--prompt", "segment the target", "--out", out, "--trace", trace, *extra]
        if where == "local":
            args += ["--mllm", f"replay:{replay}", "--sam2", tiny_models[1]]
        else:
            args += ["--server", server.url, "--token", server.token]
        result = ibisagent(*args)
        assert result.returncode == 0, result.stderr
        results[where] = (out, comparable(trace))
    return results


def test_2d_image_local_and_remote_are_identical(tmp_path, server, tiny_models, replay):
    results = run_both(tmp_path, server, tiny_models, replay, SAMPLE, ".png")
    (local_mask, local_trace), (remote_mask, remote_trace) = results["local"], results["remote"]
    assert np.array_equal(np.asarray(Image.open(local_mask)), np.asarray(Image.open(remote_mask)))
    assert local_trace == remote_trace and len(local_trace["steps"]) == 4


def test_volume_with_propagation_local_and_remote_are_identical(tmp_path, server, tiny_models, replay):
    volume = tmp_path / "brain.nrrd"
    sitk.WriteImage(mni_crop(), str(volume))
    extra = ["--slice", "axial:4", "--propagate", "--range", "2:6", "--stop-after-empty", "0"]
    results = run_both(tmp_path, server, tiny_models, replay, volume, ".nii.gz", extra)
    (local_mask, local_trace), (remote_mask, remote_trace) = results["local"], results["remote"]
    local, remote = sitk.ReadImage(str(local_mask)), sitk.ReadImage(str(remote_mask))
    assert np.array_equal(sitk.GetArrayFromImage(local), sitk.GetArrayFromImage(remote))
    assert sitk.GetArrayFromImage(local)[2:7].any() and not sitk.GetArrayFromImage(local)[7:].any()
    assert local.GetOrigin() == remote.GetOrigin() and local.GetDirection() == remote.GetDirection()
    assert local_trace == remote_trace


def test_cancelled_remote_propagation_says_so(server, tmp_path):
    import threading

    from IBISAgentLib.imaging.volume_case import VolumeCase
    from IBISAgentLib.remote.client import RemoteBackend
    from IBISAgentLib.tools.propagation import PropagationCancelled

    backend = RemoteBackend(server.url, token=server.token)
    session = backend.open_session(VolumeCase.of(mni_crop(), "axial:4"), "x")
    session.step()
    cancel = threading.Event()
    with pytest.raises(PropagationCancelled):
        backend.propagate(
            session, PropagationOptions(stop_after_empty=0), cancel=cancel, on_progress=lambda *a: cancel.set()
        )
