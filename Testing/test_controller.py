"""The interaction controller the Slicer module renders, with the tiny models and replayed outputs."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
from volume_data import mni_crop

from IBISAgentLib.backends import LocalBackend
from IBISAgentLib.controller import ControllerBusy, InteractionController
from IBISAgentLib.loading import load_models
from IBISAgentLib.volume_case import VolumeCase

OUTPUTS = [
    "<think>white matter here</think><action>Positive Point (0.5000, 0.5000)</action>",
    "<think>too much</think><action>Negative Point (0.2000, 0.3000)</action>",
    "<think>good</think><action>Terminate</action><answer>Done.</answer>",
]


@pytest.fixture()
def controller(tiny_models, tmp_path, device):
    replay = tmp_path / "outputs.json"
    replay.write_text(json.dumps(OUTPUTS))
    factory, tool = load_models(f"replay:{replay}", str(tiny_models[1]), device)
    return InteractionController(LocalBackend(factory, tool, device=device))


@pytest.fixture()
def case():
    image = mni_crop()
    image.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))  # rotated in plane: RAS differs from IJK
    return VolumeCase.of(image, "axial:4")


def test_run_produces_markers_log_and_masks_for_the_segment(controller, case):
    controller.open(case, "segment the white matter")
    assert [e.kind for e in controller.wait()] == ["opened", "idle"]
    controller.run()
    events = controller.wait()
    kinds = [e.kind for e in events]
    assert kinds == ["step", "step", "step", "finished", "idle"]
    markers = controller.state.markers
    assert [m.label for m in markers] == ["1+", "2−"] and markers[0].color != markers[1].color
    for marker, step in zip(markers, [e.step for e in events[:2]], strict=True):
        lps = case.image.TransformIndexToPhysicalPoint([int(v) for v in step.ijk])
        assert marker.ras == pytest.approx((-lps[0], -lps[1], lps[2]))
        assert step.ijk[2] == 4
    assert controller.state.stop_reason == "terminate" and controller.state.answer == "Done."
    assert "white matter here" in controller.state.log[0]
    finished = events[-2]
    assert finished.slices == (4, 4) and finished.plane.shape == (case.geometry.height, case.geometry.width)
    assert finished.plane.any() and np.array_equal(finished.plane, controller.session.mask)
    assert not controller.state.busy


def test_corrections_by_ras_undo_and_trace(controller, case):
    controller.open(case, "x")
    controller.wait()
    controller.step()
    controller.wait()
    target = case.geometry.ijk_to_ras(np.array([10.0, 20.0, 4.0]))
    controller.click(tuple(target), positive=False)
    events = controller.wait()
    step = events[0].step
    assert step.source == "user" and list(step.ijk) == [10, 20, 4]
    assert controller.state.markers[-1].label == "2−" and controller.state.markers[-1].source == "user"
    controller.undo()
    assert controller.wait()[0].kind == "undone" and len(controller.state.markers) == 1
    trace = json.loads(controller.trace_json())
    assert trace["slice"]["axis"] == "axial" and [s["source"] for s in trace["undone"]] == ["user"]


def test_clicks_off_the_slice_are_refused(controller, case):
    controller.open(case, "x")
    controller.wait()
    elsewhere = case.geometry.ijk_to_ras(np.array([10.0, 20.0, 7.0]))
    with pytest.raises(ValueError, match="not on the agent's slice 4"):
        controller.click(tuple(elsewhere), positive=True)


def test_propagation_and_busy_guard(controller, case):
    controller.open(case, "x")
    controller.wait()
    controller.step()
    controller.wait()
    controller.propagate(first=2, last=6, stop_after_empty=0)
    with pytest.raises(ControllerBusy):
        controller.step()
    events = controller.wait()
    assert [e.kind for e in events if e.kind == "progress"] == ["progress"] * 5
    result = next(e for e in events if e.kind == "propagated").mask
    assert [bool(result[k].any()) for k in range(10)] == [
        False,
        False,
        True,
        True,
        True,
        True,
        True,
        False,
        False,
        False,
    ]


def test_cancel_and_failures_end_with_revert(controller, case, tiny_models):
    controller.open(case, "x")
    controller.wait()
    controller.propagate(stop_after_empty=0)  # nothing to propagate yet: the key mask is empty
    events = controller.wait()
    assert [e.kind for e in events] == ["error", "revert", "idle"] and "empty" in events[0].message
    controller.step()
    controller.wait()
    controller.propagate(stop_after_empty=0)
    controller.cancel()
    events = controller.wait()
    assert "revert" in [e.kind for e in events] or "propagated" in [e.kind for e in events]


def test_image_geometry_survives_slicer_style_pull(case):
    """Slicer hands us volumes through sitkUtils (LPS SimpleITK images); the case keeps their grid."""
    assert isinstance(case.image, sitk.Image) and case.windowed.dtype == np.uint8


def test_the_backend_is_built_on_the_worker_at_first_open(tiny_models, tmp_path, case, device):
    import threading

    replay = tmp_path / "outputs.json"
    replay.write_text(json.dumps(OUTPUTS))
    built_on = []

    def factory():
        built_on.append(threading.current_thread().name)
        policies, tool = load_models(f"replay:{replay}", str(tiny_models[1]), device)
        return LocalBackend(policies, tool, device=device)

    controller = InteractionController(factory)
    assert controller.backend is None
    controller.open(case, "x")
    assert [e.kind for e in controller.wait()] == ["opened", "idle"]
    assert built_on == ["ibisagent-controller"] and controller.backend is not None


def test_a_cancelled_run_is_rolled_back_and_reverted(tiny_models, case, device):
    import threading

    from IBISAgentLib.medsam2 import MedSAM2Tool

    release = threading.Event()

    class ClicksThenWaits:
        description = "test policy: one click, then waits until cancelled"

        def __init__(self):
            self.calls = 0

        def generate(self, request, cancel):
            self.calls += 1
            if self.calls == 1:
                return OUTPUTS[0]
            release.set()
            cancel.wait(30)
            return OUTPUTS[1]

    controller = InteractionController(LocalBackend(ClicksThenWaits, MedSAM2Tool(tiny_models[1], device=device)))
    controller.open(case, "x")
    controller.wait()
    controller.run()
    assert release.wait(60)
    controller.cancel()
    events = controller.wait()
    kinds = [e.kind for e in events]
    assert kinds[-3:] == ["revert", "finished", "idle"] and events[-2].mask is None
    assert controller.session.steps == [] and controller.state.markers == []
    assert controller.state.stop_reason == "cancelled"


def test_a_failed_open_leaves_no_session_behind(controller, case):
    controller.open(case, "x")
    controller.wait()
    assert controller.session is not None
    controller.open(case, "x", max_turns=0)  # refused by the session, on the worker
    kinds = [e.kind for e in controller.wait()]
    assert kinds[0] == "error" and controller.session is None
    controller.run()  # nothing of the old session acts any more
    events = controller.wait()
    assert events[0].kind == "error" and "no session" in events[0].message
    assert not any(e.kind == "step" for e in events)


def test_the_segment_is_kept_beyond_the_slices_an_event_replaces(controller, case):
    """The UI applies each event to the segment as it is then: edits made meanwhile elsewhere survive."""
    segment = np.zeros(case.windowed.shape, bool)
    segment[1, 5:9, 5:9] = True  # drawn earlier on another slice
    segment[4, 30:34, 30:34] = True  # already on the agent's slice: the session starts from it
    controller.open(case, "x", segment=segment)
    controller.wait()
    assert json.loads(controller.trace_json())["initial_mask_area"] == 16

    def apply(events):
        nonlocal segment
        for event in events:
            segment = controller.segment_after(event, segment)

    controller.step()
    apply(controller.wait())
    assert segment[1, 5:9, 5:9].all() and np.array_equal(case.geometry.extract(segment), controller.session.mask)
    segment[7, 0:3, 0:3] = True  # the clinician paints on another slice while the session is open

    controller.propagate(first=3, last=5, stop_after_empty=0)
    events = controller.wait()
    propagated = next(e for e in events if e.kind == "propagated")
    assert propagated.slices == (3, 5)
    apply(events)
    assert segment[3].any() and segment[5].any() and segment[1, 5:9, 5:9].all() and segment[7, 0:3, 0:3].all()
    after_propagation = segment.copy()

    corner = case.geometry.ijk_to_ras(np.array([1.0, 1.0, 4.0]))
    controller.click(tuple(corner), positive=False)
    apply(controller.wait())
    keep = [0, 1, 2, 3, 5, 6, 7, 8, 9]
    assert np.array_equal(segment[keep], after_propagation[keep])  # a correction changes the agent's slice only
    controller.undo()
    apply(controller.wait())
    assert np.array_equal(segment, after_propagation)


def waiting_controller(tiny_models, device):
    """A controller whose policy answers (one positive click) only once ``release`` is set."""
    import threading

    from IBISAgentLib.medsam2 import MedSAM2Tool

    release = threading.Event()

    class WaitsForRelease:
        description = "test policy: answers once released"

        def generate(self, request, cancel):
            release.wait(30)
            return OUTPUTS[0]

    return InteractionController(LocalBackend(WaitsForRelease, MedSAM2Tool(tiny_models[1], device=device))), release


def test_closing_drops_what_the_closed_operation_still_reports(tiny_models, case, device):
    import threading

    controller, release = waiting_controller(tiny_models, device)
    controller.open(case, "x")
    controller.wait()
    controller.run()
    worker = controller._worker
    threading.Timer(0.5, release.set).start()  # the policy answers after close() has given up waiting
    controller.close(timeout=0.1)
    assert worker.is_alive()
    assert not controller.state.busy and controller.session is None
    worker.join(30)
    assert controller.poll() == []  # its late step, finished and idle never reach the UI
    controller.open(case, "x")
    assert [e.kind for e in controller.wait()] == ["opened", "idle"]


def test_a_segment_on_another_grid_is_refused(controller, case):
    with pytest.raises(ValueError, match="the segment is"):
        controller.open(case, "x", segment=np.zeros((3, 3, 3), bool))


def test_poll_can_lend_the_worker_time_while_an_operation_runs(tiny_models, case, device):
    """Slicer's main thread holds the GIL while idle, so its timer waits in poll(); the wait ends when the
    operation ends or at the timeout, and at once when nothing runs."""
    import time

    controller, release = waiting_controller(tiny_models, device)
    controller.open(case, "x", max_turns=1)
    controller.wait()
    started = time.monotonic()
    assert controller.poll(wait=5.0) == [] and time.monotonic() - started < 1.0  # idle: no waiting

    controller.step()
    started = time.monotonic()
    assert controller.poll(wait=0.3) == [] and time.monotonic() - started >= 0.25  # busy, nothing yet
    release.set()
    started = time.monotonic()
    events = controller.poll(wait=30.0)
    assert time.monotonic() - started < 30.0 and [e.kind for e in events] == ["step", "finished", "idle"]
