"""The workflow driver every front end renders, with the tiny models and replayed outputs, over array ports."""

import json
import threading
import time
from dataclasses import replace

import numpy as np
import pytest
from volume_data import mni_crop
from workflow_ports import LOCAL, OUTPUTS, ArrayTarget, clicks_then_waits, waits_for_release

from IBISAgentLib.agent.backends import LocalBackend
from IBISAgentLib.imaging.volume_case import VolumeCase
from IBISAgentLib.models.loading import load_models
from IBISAgentLib.tools.click_tool import SAM2Tool
from IBISAgentLib.tools.propagation import PropagationOptions
from IBISAgentLib.workflow import (
    BackendChoice,
    DriverBusy,
    Failed,
    Finished,
    Idle,
    Opened,
    Progressed,
    Propagated,
    Reverted,
    SliceChanged,
    TraceReady,
    WorkflowDriver,
)


@pytest.fixture()
def backend(tiny_models, tmp_path, device):
    replay = tmp_path / "outputs.json"
    replay.write_text(json.dumps(OUTPUTS))
    factory, tool = load_models(f"replay:{replay}", str(tiny_models[1]), device)
    return LocalBackend(factory, tool, device=device)


@pytest.fixture()
def driver(backend):
    return WorkflowDriver(lambda choice: backend)


@pytest.fixture()
def case():
    image = mni_crop()
    image.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))  # rotated in plane: RAS differs from IJK
    return VolumeCase.of(image, "axial:4")


def kinds(events):
    return [type(e).__name__ for e in events]


def started(driver, case, target=None, then=None, **kwargs):
    target = target or ArrayTarget(case.windowed.shape)
    driver.start(case, "segment the white matter", target, target, LOCAL, then=then, **kwargs)
    driver.wait()
    return target


def test_run_writes_each_step_into_the_segment_with_markers_log_and_trace(driver, case):
    target = ArrayTarget(case.windowed.shape)
    driver.start(case, "segment the white matter", target, target, LOCAL)  # open, then run
    events = driver.wait()
    assert kinds(events) == ["Opened", "SliceChanged", "SliceChanged", "SliceChanged", "Finished", "TraceReady", "Idle"]
    markers = driver.state.markers
    assert [m.label for m in markers] == ["1+", "2−"] and markers[0].color != markers[1].color
    assert target.markers == markers
    for marker, step in zip(markers, [e.step for e in events[1:3]], strict=True):
        lps = case.image.TransformIndexToPhysicalPoint([int(v) for v in step.ijk])
        assert marker.ras == pytest.approx((-lps[0], -lps[1], lps[2]))
        assert step.ijk[2] == 4
    assert driver.state.stop_reason == "terminate" and driver.state.answer == "Done."
    assert driver.state.status == "Stopped: terminate — Done."
    assert any("white matter here" in line for line in driver.state.log)
    assert np.array_equal(case.geometry.extract(target.segment), driver.session.mask) and target.segment.any()
    assert json.loads(target.traces[-1])["instruction"] == "segment the white matter"
    assert not driver.state.busy


def test_start_then_step_takes_one_turn(driver, case):
    target = ArrayTarget(case.windowed.shape)
    driver.start(case, "x", target, target, LOCAL, then="step")
    assert kinds(driver.wait()) == ["Opened", "SliceChanged", "Finished", "TraceReady", "Idle"]
    assert len(driver.session.steps) == 1


def test_corrections_by_world_point_undo_and_trace(driver, case):
    target = started(driver, case)
    driver.step()
    driver.wait()
    driver.click(tuple(case.geometry.ijk_to_ras(np.array([10.0, 20.0, 4.0]))), positive=False)
    events = driver.wait()
    step = events[0].step
    assert step.source == "user" and list(step.ijk) == [10, 20, 4]
    assert driver.state.markers[-1].label == "2−" and driver.state.markers[-1].source == "user"
    driver.undo()
    events = driver.wait()
    assert isinstance(events[0], SliceChanged) and events[0].cause == "undone" and len(driver.state.markers) == 1
    trace = json.loads(target.traces[-1])
    assert trace["slice"]["axis"] == "axial" and [s["source"] for s in trace["undone"]] == ["user"]


def test_clicks_off_the_slice_are_refused(driver, case):
    started(driver, case)
    with pytest.raises(ValueError, match="not on the agent's slice 4"):
        driver.click(tuple(case.geometry.ijk_to_ras(np.array([10.0, 20.0, 7.0]))), positive=True)


def test_propagation_progress_and_busy_guard(driver, case):
    target = started(driver, case)
    driver.step()
    driver.wait()
    driver.propagate(PropagationOptions(first=2, last=6, stop_after_empty=0))
    with pytest.raises(DriverBusy):
        driver.step()
    events = driver.wait()
    assert [(e.done, e.total) for e in events if isinstance(e, Progressed)] == [(n, 5) for n in range(1, 6)]
    assert next(e for e in events if isinstance(e, Propagated)).first == 2
    assert [bool(target.segment[k].any()) for k in range(10)] == [False, False, True, True, True, True, True,
                                                                  False, False, False]  # fmt: skip


def test_failures_say_why_and_put_the_segment_back(driver, case):
    before = np.zeros(case.windowed.shape, bool)
    before[8, 2:5, 2:5] = True
    target = started(driver, case, ArrayTarget(case.windowed.shape, before))
    driver.propagate(PropagationOptions(stop_after_empty=0))  # nothing to propagate yet: the key mask is empty
    events = driver.wait()
    assert kinds(events) == ["Failed", "Reverted", "Idle"] and "nothing to propagate" in events[0].message
    assert np.array_equal(target.segment, before) and target.restores == 1
    assert driver.state.log[-1].startswith("put back")


def test_a_cancelled_run_is_rolled_back_and_the_segment_restored(tiny_models, case, device):
    ClicksThenWaits, release = clicks_then_waits(OUTPUTS[0], OUTPUTS[1])
    backend = LocalBackend(ClicksThenWaits, SAM2Tool(tiny_models[1], device=device))
    driver = WorkflowDriver(lambda choice: backend)
    before = np.zeros(case.windowed.shape, bool)
    before[1, 5:9, 5:9] = True
    target = ArrayTarget(case.windowed.shape, before)
    driver.start(case, "x", target, target, LOCAL)
    assert release.wait(60)
    driver.poll()  # the first step reaches the segment before the cancel
    assert target.writes == 1
    driver.cancel()
    events = driver.wait()
    assert kinds(events)[-4:] == ["Reverted", "Finished", "TraceReady", "Idle"]
    assert driver.session.steps == [] and driver.state.markers == [] and target.markers == []
    assert driver.state.stop_reason == "cancelled" and np.array_equal(target.segment, before)


def test_a_failed_start_leaves_no_session_behind(backend, case):
    def build(choice):
        if choice != LOCAL:
            raise RuntimeError("the models could not be loaded")
        return backend

    driver = WorkflowDriver(build)
    started(driver, case)
    assert driver.session is not None
    target = ArrayTarget(case.windowed.shape)
    driver.start(case, "x", target, target, replace(LOCAL, mllm="elsewhere"), then=None)  # fails on the worker
    events = driver.wait()
    assert isinstance(events[0], Failed) and "could not be loaded" in events[0].message
    assert driver.session is None
    driver.run()  # nothing of the old session acts any more
    events = driver.wait()
    assert isinstance(events[0], Failed) and "no session" in events[0].message
    assert not any(isinstance(e, SliceChanged) for e in events)


def test_results_replace_only_their_slices_of_the_segment_as_it_is(driver, case):
    """Edits made meanwhile elsewhere survive each result."""
    segment = np.zeros(case.windowed.shape, bool)
    segment[1, 5:9, 5:9] = True  # drawn earlier on another slice
    segment[4, 30:34, 30:34] = True  # already on the agent's slice: the session starts from it
    target = started(driver, case, ArrayTarget(case.windowed.shape, segment))
    assert json.loads(driver.trace_json())["initial_mask_area"] == 16
    driver.step()
    driver.wait()
    assert target.segment[1, 5:9, 5:9].all()
    assert np.array_equal(case.geometry.extract(target.segment), driver.session.mask)
    target.segment[7, 0:3, 0:3] = True  # the clinician paints on another slice while the session is open
    driver.propagate(PropagationOptions(first=3, last=5, stop_after_empty=0))
    driver.wait()
    assert target.segment[3].any() and target.segment[5].any()
    assert target.segment[1, 5:9, 5:9].all() and target.segment[7, 0:3, 0:3].all()
    after_propagation = target.segment.copy()
    driver.click(tuple(case.geometry.ijk_to_ras(np.array([1.0, 1.0, 4.0]))), positive=False)
    driver.wait()
    keep = [0, 1, 2, 3, 5, 6, 7, 8, 9]
    assert np.array_equal(target.segment[keep], after_propagation[keep])  # a correction changes the agent's slice
    driver.undo()
    driver.wait()
    assert np.array_equal(target.segment, after_propagation)


def test_a_segment_on_another_grid_is_refused(driver, case):
    target = ArrayTarget((3, 3, 3))
    with pytest.raises(ValueError, match="the segment is"):
        driver.start(case, "x", target, target, LOCAL)
    with pytest.raises(ValueError, match="Type what to segment"):
        driver.start(case, "  ", ArrayTarget(case.windowed.shape), target, LOCAL)


def test_one_backend_per_choice_built_on_the_worker(tiny_models, tmp_path, case, device):
    replay = tmp_path / "outputs.json"
    replay.write_text(json.dumps(OUTPUTS * 4))
    built = []

    def build(choice):
        built.append((choice, threading.current_thread().name))
        policies, tool = load_models(f"replay:{replay}", str(tiny_models[1]), device)
        return LocalBackend(policies, tool, device=device)

    driver = WorkflowDriver(build)
    for choice in (LOCAL, BackendChoice(), BackendChoice(token="t1"), BackendChoice(token="t2")):
        target = ArrayTarget(case.windowed.shape)
        driver.start(case, "x", target, target, choice, then=None)
        assert kinds(driver.wait()) == ["Opened", "Idle"]
    assert [c for c, _ in built] == [LOCAL, BackendChoice(token="t1"), BackendChoice(token="t2")]
    assert {name for _, name in built} == {"ibisagent-workflow"}


def test_the_choice_is_stored_without_its_token():
    choice = BackendChoice(server="https://ibis.example", token="s3cret")
    assert "s3cret" not in json.dumps(choice.settings()) and "s3cret" not in repr(choice)
    assert BackendChoice.from_settings(choice.settings(), token="s3cret") == choice
    assert BackendChoice.from_settings({}) == BackendChoice()


def waiting_driver(tiny_models, device):
    """A driver whose policy answers (one positive click) only once ``release`` is set."""
    WaitsForRelease, release = waits_for_release(OUTPUTS[0])
    backend = LocalBackend(WaitsForRelease, SAM2Tool(tiny_models[1], device=device))
    return WorkflowDriver(lambda choice: backend), release


def test_closing_drops_what_the_closed_operation_still_reports(tiny_models, case, device):
    driver, release = waiting_driver(tiny_models, device)
    target = started(driver, case)
    driver.run()
    worker = driver._worker
    threading.Timer(0.5, release.set).start()  # the policy answers after close() has given up waiting
    driver.close(timeout=0.1)
    assert worker.is_alive()
    assert not driver.state.busy and driver.session is None
    worker.join(30)
    assert driver.poll() == []  # its late step, finish and idle never reach the segment or the UI
    assert target.writes == 0 and target.restores == 0
    started(driver, case, then=None)
    assert driver.session is not None


def test_poll_can_lend_the_worker_time_while_an_operation_runs(tiny_models, case, device):
    """Slicer's main thread holds the GIL while idle, so its timer waits in poll(); the wait ends when the
    operation ends or at the timeout, and at once when nothing runs."""
    driver, release = waiting_driver(tiny_models, device)
    started(driver, case, max_turns=1)
    begun = time.monotonic()
    assert driver.poll(wait=5.0) == [] and time.monotonic() - begun < 1.0  # idle: no waiting
    driver.step()
    begun = time.monotonic()
    assert driver.poll(wait=0.3) == [] and time.monotonic() - begun >= 0.25  # busy, nothing yet
    release.set()
    begun = time.monotonic()
    events = driver.poll(wait=30.0)
    assert time.monotonic() - begun < 30.0
    assert [type(e) for e in events] == [SliceChanged, Finished, TraceReady, Idle]


def test_a_target_that_refuses_a_write_is_a_message_not_a_crash(driver, case):
    class ReadOnly(ArrayTarget):
        def write(self, mask):
            raise RuntimeError("the segmentation is locked")

        def write_plane(self, geometry, plane):
            raise RuntimeError("the segmentation is locked")

    target = ReadOnly(case.windowed.shape)
    driver.start(case, "x", target, target, LOCAL, then="step")
    events = driver.wait()
    failed = [e for e in events if isinstance(e, Failed)]
    assert failed and "the segmentation is locked" in failed[0].message
    assert isinstance(events[-1], Idle) and not driver.state.busy
    assert isinstance(events[0], Opened) and not any(isinstance(e, Reverted) for e in events)


def test_on_event_wakes_the_host_once_per_queued_event_from_the_worker(backend, case):
    """A host with an event loop polls when woken: every event is queued before its call, and the call comes
    from the worker thread, so the host must only hand it over."""
    calls: list[tuple[str, bool]] = []
    driver = WorkflowDriver(
        lambda choice: backend, on_event=lambda: calls.append((threading.current_thread().name, driver.has_results))
    )
    assert not driver.has_results
    target = ArrayTarget(case.windowed.shape)
    driver.start(case, "segment the white matter", target, target, LOCAL, then="step")
    driver._worker.join(60)
    assert driver.has_results
    events = driver.poll()
    assert kinds(events) == ["Opened", "SliceChanged", "Finished", "TraceReady", "Idle"]
    assert len(calls) == len(events) and all(name == "ibisagent-workflow" and queued for name, queued in calls)
    assert not driver.has_results
