"""The agent loop with replayed model outputs and the real MedSAM2 code (tiny random weights)."""

import json
import sys
import threading

import jsonschema
import numpy as np
import pytest

from IBISAgentLib.agent.interfaces import Click
from IBISAgentLib.agent.prompts import IBIS_V1
from IBISAgentLib.agent.session import AgentSession
from IBISAgentLib.agent.trace import SCHEMA_PATH, Trace
from IBISAgentLib.imaging.rendering import overlay_mask
from IBISAgentLib.policies import PolicyError, ReplayPolicy


def click(kind, x, y):
    return f"<think>{kind} at {x},{y}</think><action>{kind.capitalize()} Point ({x:.4f}, {y:.4f})</action>"


TERMINATE = "<think>fits</think><action>Terminate</action><answer>Vertebral body segmented.</answer>"


def new_session(image, tool, outputs, **kwargs):
    policy = ReplayPolicy(outputs)
    return AgentSession(image, "segment the vertebral body", policy, tool, **kwargs), policy


def test_clicks_drive_the_tool_with_history_and_previous_logits(sample_image, medsam2_tool):
    session, policy = new_session(
        sample_image, medsam2_tool, [click("positive", 0.5, 0.25), click("negative", 0.1, 0.9), TERMINATE]
    )
    seen = []
    session.on_step = seen.append
    trace = session.run()
    assert trace.stop_reason == "terminate" and trace.answer == "Vertebral body segmented."
    assert [s.turn for s in seen] == [1, 2, 3]
    assert seen[0].pixel == (64, 32) and seen[1].pixel == (13, 115)
    assert session.clicks == [Click(64, 32, True), Click(13, 115, False)]

    # The same chain computed directly: all clicks so far plus the previous best logits.
    first = medsam2_tool.predict([Click(64, 32, True)], None)
    second = medsam2_tool.predict([Click(64, 32, True), Click(13, 115, False)], first.logits)
    assert np.array_equal(seen[0].mask, first.mask) and seen[0].score == pytest.approx(first.score)
    assert np.array_equal(session.mask, second.mask)
    assert seen[1].mask_area == int(second.mask.sum())

    # What the model saw: turn 1 the plain image and the instruction, later turns the overlay and refinement text.
    first_request, second_request = policy.requests[0], policy.requests[1]
    assert first_request.user_text == "<image>segment the vertebral body"
    assert np.array_equal(first_request.image, sample_image)
    assert second_request.user_text == IBIS_V1.user_text("segment the vertebral body", refinement=True)
    assert np.array_equal(second_request.image, overlay_mask(sample_image, first.mask, (34, 139, 34), 0.4))
    assert all(r.system_prompt == IBIS_V1.system_prompt and r.history == [] for r in policy.requests)
    assert all(r.max_new_tokens == 512 for r in policy.requests)


def test_one_image_embedding_per_image(sample_image, tiny_models, device):
    from IBISAgentLib.tools.click_tool import SAM2Tool

    tool = SAM2Tool(tiny_models[1], device=device)
    outputs = [click("positive", 0.1 * i, 0.5) for i in range(1, 6)] + [TERMINATE]
    session, _ = new_session(sample_image, tool, outputs)
    session.run()
    session.add_click(3, 4, positive=False)
    assert tool.embeddings_computed == 1
    tool.set_image(sample_image[::-1].copy())
    assert tool.embeddings_computed == 2


def test_terminate_first_means_target_absent_and_empty_mask(sample_image, tiny_models, device):
    from IBISAgentLib.tools.click_tool import SAM2Tool

    tool = SAM2Tool(tiny_models[1], device=device)
    answer = "<think>no tumor visible</think><action>Terminate</action><answer>No liver tumor in this slice.</answer>"
    session, _ = new_session(sample_image, tool, [answer])
    trace = session.run()
    assert trace.stop_reason == "terminate" and trace.answer == "No liver tumor in this slice."
    assert not session.mask.any() and trace.steps[0].mask_area == 0
    assert tool.embeddings_computed == 0


def test_same_action_three_times_stops_without_applying_the_third(sample_image, medsam2_tool):
    same = click("positive", 0.5, 0.5)
    session, _ = new_session(sample_image, medsam2_tool, [same, same, same, TERMINATE])
    trace = session.run()
    assert trace.stop_reason == "repeated_action"
    assert len(trace.steps) == 3 and len(session.clicks) == 2
    assert "not applied" in trace.steps[2].error


def test_user_click_breaks_a_repeat_streak(sample_image, medsam2_tool):
    same = click("positive", 0.5, 0.5)
    session, _ = new_session(sample_image, medsam2_tool, [same, same, same, TERMINATE])
    session.step()
    session.step()
    session.add_click(10, 10, positive=False)
    session.step()
    assert session.stop_reason is None and len(session.clicks) == 4


def test_unparseable_gets_one_retry_with_a_reminder(sample_image, medsam2_tool):
    session, policy = new_session(sample_image, medsam2_tool, ["garbage", click("positive", 0.5, 0.5), TERMINATE])
    trace = session.run()
    assert trace.stop_reason == "terminate"
    assert trace.steps[0].error and trace.steps[0].raw == "garbage"
    assert policy.requests[1].user_text.endswith(IBIS_V1.format_reminder)
    assert IBIS_V1.format_reminder not in policy.requests[2].user_text


def test_two_unparseable_in_a_row_stop(sample_image, medsam2_tool):
    session, _ = new_session(sample_image, medsam2_tool, ["garbage", "<action>Jump</action>", TERMINATE])
    trace = session.run()
    assert trace.stop_reason == "unparseable" and len(trace.steps) == 2
    assert "Jump" in trace.steps[1].error


def test_max_turns(sample_image, medsam2_tool):
    outputs = [click("positive", 0.1 * i, 0.3) for i in range(1, 9)]
    session, _ = new_session(sample_image, medsam2_tool, outputs, max_turns=3)
    trace = session.run()
    assert trace.stop_reason == "max_turns" and len(trace.steps) == 3
    trace = session.run()  # Continue: another run of at most max_turns
    assert trace.stop_reason == "max_turns" and len(trace.steps) == 6


def test_cancel_during_generation_discards_the_turn(sample_image, medsam2_tool):
    class CancelsWhileThinking:
        description = "cancels"

        def __init__(self):
            self.calls = 0

        def generate(self, request, cancel):
            self.calls += 1
            if self.calls == 2:
                session.cancel()
                assert cancel.is_set()
            return click("positive", 0.2 * self.calls, 0.5)

    session = AgentSession(sample_image, "x", CancelsWhileThinking(), medsam2_tool)
    trace = session.run()
    assert trace.stop_reason == "cancelled"
    assert len(trace.steps) == 1 and len(session.clicks) == 1
    assert np.array_equal(session.mask, trace.steps[0].mask)


def test_cancel_stops_a_local_qwen_generation_early(sample_image, tiny_models, medsam2_tool, device):
    from IBISAgentLib.policies.transformers_qwen import TransformersQwenPolicy

    policy = TransformersQwenPolicy(tiny_models[0], device=device)
    session = AgentSession(sample_image, "x", policy, medsam2_tool)
    timer = threading.Timer(0.2, session.cancel)
    timer.start()
    trace = session.run()
    timer.join()
    assert trace.stop_reason == "cancelled" and trace.steps == []


def test_undo_restores_the_previous_step_of_either_source(sample_image, medsam2_tool):
    session, _ = new_session(sample_image, medsam2_tool, [click("positive", 0.5, 0.5), TERMINATE])
    first = session.step()
    user = session.add_click(20, 100, positive=False)
    assert user.source == "user" and user.action.x == pytest.approx(20 / 128)
    assert session.clicks[-1] == Click(20, 100, False)
    assert session.undo() is user
    assert session.clicks == [Click(64, 64, True)] and np.array_equal(session.mask, first.mask)
    session.step()
    assert session.stop_reason == "terminate"
    session.undo()
    assert session.stop_reason is None and session.answer is None
    session.undo()
    assert session.clicks == [] and not session.mask.any()
    assert session.undo() is None
    assert [s.source for s in session.trace().undone] == ["user", "agent", "agent"]


def test_initial_mask_is_refined(sample_image, medsam2_tool):
    initial = np.zeros(sample_image.shape[:2], bool)
    initial[40:80, 50:90] = True
    session, policy = new_session(
        sample_image, medsam2_tool, [click("negative", 0.5, 0.5), TERMINATE], initial_mask=initial
    )
    trace = session.run()
    assert trace.initial_mask_area == initial.sum()
    assert policy.requests[0].user_text.startswith("<image>This is a refinement step.")
    assert np.array_equal(policy.requests[0].image, overlay_mask(sample_image, initial, (34, 139, 34), 0.4))
    expected = medsam2_tool.predict([Click(64, 64, False)], medsam2_tool.mask_to_logits(initial))
    assert np.array_equal(trace.steps[0].mask, expected.mask)


def test_policy_failure_ends_with_error_and_keeps_the_mask(sample_image, medsam2_tool):
    session, _ = new_session(sample_image, medsam2_tool, [click("positive", 0.5, 0.5)])
    trace = session.run()
    assert trace.stop_reason == "error"
    assert "no output left" in trace.steps[-1].error
    assert np.array_equal(session.mask, trace.steps[0].mask)


def test_bad_session_input(sample_image, medsam2_tool):
    with pytest.raises(ValueError, match="instruction is empty"):
        AgentSession(sample_image, "  ", ReplayPolicy([]), medsam2_tool)
    with pytest.raises(ValueError, match="initial mask"):
        AgentSession(sample_image, "x", ReplayPolicy([]), medsam2_tool, initial_mask=np.zeros((3, 3), bool))
    session = AgentSession(sample_image, "x", ReplayPolicy([]), medsam2_tool)
    with pytest.raises(ValueError, match="outside"):
        session.add_click(128, 0, positive=True)


def test_history_profile_sends_past_turns(sample_image, medsam2_tool):
    from dataclasses import replace

    profile = replace(IBIS_V1, send_history=True)
    outputs = [click("positive", 0.5, 0.5), click("positive", 0.3, 0.3), TERMINATE]
    session, policy = new_session(sample_image, medsam2_tool, outputs, profile=profile)
    session.run()
    assert [len(r.history) for r in policy.requests] == [0, 1, 2]
    assert policy.requests[2].history[1][2] == outputs[1]
    assert np.array_equal(policy.requests[2].history[1][1], policy.requests[1].image)


def test_trace_schema_and_round_trip(sample_image, medsam2_tool):
    session, _ = new_session(sample_image, medsam2_tool, ["junk", click("positive", 0.5, 0.5), TERMINATE])
    session.run()
    session.add_click(5, 6, positive=True)
    session.undo()
    data = json.loads(session.trace().to_json())
    jsonschema.validate(data, json.loads(SCHEMA_PATH.read_text(encoding="utf-8")))
    assert Trace.from_dict(data).to_dict() == data
    for step in data["steps"]:
        assert set(step["timings_ms"]) == {"policy", "tool", "loop"}


def test_the_loop_does_no_file_io(sample_image, medsam2_tool):
    medsam2_tool.set_image(sample_image)
    session, _ = new_session(
        sample_image, medsam2_tool, [click("positive", 0.1 * i, 0.4) for i in range(1, 8)] + [TERMINATE]
    )
    opened = []
    active = [True]

    def audit(event, args):
        if active[0] and event == "open":
            opened.append(args[0])

    sys.addaudithook(audit)
    try:
        session.run()
    finally:
        active[0] = False
    assert session.stop_reason == "terminate"
    assert opened == []


def test_replay_policy_reads_lists_and_traces(tmp_path, sample_image, medsam2_tool):
    outputs = [click("positive", 0.5, 0.5), TERMINATE]
    (tmp_path / "list.json").write_text(json.dumps(outputs))
    assert ReplayPolicy.from_file(tmp_path / "list.json").outputs == outputs
    session = AgentSession(sample_image, "x", ReplayPolicy(outputs), medsam2_tool)
    session.run()
    session.trace().save(tmp_path / "trace.json")
    assert ReplayPolicy.from_file(tmp_path / "trace.json").outputs == outputs
    (tmp_path / "bad.json").write_text('{"a": 1}')
    with pytest.raises(ValueError, match="expected a JSON list"):
        ReplayPolicy.from_file(tmp_path / "bad.json")
    with pytest.raises(PolicyError):
        ReplayPolicy([]).generate(None, threading.Event())
