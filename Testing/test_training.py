"""Oracle clicker, classical tool, GRPO rewards, rollout environment."""

import json
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from IBISAgentLib.agent.actions import Action, format_response, parse_response
from IBISAgentLib.agent.interfaces import Click, PolicyRequest
from IBISAgentLib.agent.prompts import IBIS_V1
from IBISAgentLib.agent.session import AgentSession
from IBISAgentLib.policies import ReplayPolicy
from IBISAgentLib.tools.classical import RandomWalkerTool
from IBISAgentLib.training.oracle import OraclePolicy, depth, iou, next_click
from IBISAgentLib.training.rewards import (
    RewardState,
    compute_score,
    format_score,
    length_score,
    replay_mask,
    score_response,
)
from IBISAgentLib.training.rollout import RolloutEnv


@st.composite
def mask_pairs(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = (draw(st.integers(8, 40)), draw(st.integers(8, 40)))

    def blobs():
        mask = np.zeros(shape, bool)
        for _ in range(rng.integers(0, 4)):
            r, c = rng.integers(0, shape[0]), rng.integers(0, shape[1])
            h, w = rng.integers(1, shape[0] // 2 + 1), rng.integers(1, shape[1] // 2 + 1)
            mask[r : r + h, c : c + w] = True
        return mask

    truth, pred = blobs(), blobs()
    candidates = np.argwhere(truth ^ pred)
    count = min(len(candidates), draw(st.integers(0, 3)))
    clicked = [Click(int(c), int(r), bool(rng.integers(0, 2))) for r, c in candidates[:count]]
    return truth, pred, clicked


@settings(max_examples=300, deadline=None)
@given(mask_pairs())
def test_oracle_clicks_deep_inside_the_larger_error_never_twice(pair):
    truth, pred, clicked = pair
    click = next_click(truth, pred, clicked)
    fn, fp = truth & ~pred, ~truth & pred
    for c in clicked:
        fn[c.y, c.x] = fp[c.y, c.x] = False
    if click is None:
        assert not fn.any() and not fp.any()
        return
    region = fn if click.positive else fp
    assert region[click.y, click.x]  # inside the chosen error region
    assert (click.x, click.y) not in {(c.x, c.y) for c in clicked}
    assert (
        depth(fn).max(initial=0) >= depth(fp).max(initial=0)
        if click.positive
        else depth(fp).max() > depth(fn).max(initial=0)
    )
    assert depth(region)[click.y, click.x] == depth(region).max()  # the deepest point
    if depth(region).max() > 1:  # a region with an interior is never clicked on the image border
        assert 0 < click.x < truth.shape[1] - 1 and 0 < click.y < truth.shape[0] - 1


def request_for(mask, clicks=()):
    return PolicyRequest(
        IBIS_V1.system_prompt, "x", np.zeros((*mask.shape, 3), np.uint8), 512, 1, 1, mask=mask, clicks=tuple(clicks)
    )


def test_oracle_policy_stops_at_the_threshold_or_when_the_target_is_absent():
    truth = np.zeros((20, 20), bool)
    truth[5:15, 5:15] = True
    oracle = OraclePolicy(truth, threshold=0.85)
    first = parse_response(oracle.generate(request_for(np.zeros_like(truth)), threading.Event()))
    assert first.action == Action("positive", 9 / 20, 9 / 20) and first.think  # first of the deepest pixels
    good = truth.copy()
    good[5, 5:15] = False  # IoU 0.9
    assert parse_response(oracle.generate(request_for(good), threading.Event())).action.kind == "terminate"
    absent = OraclePolicy(np.zeros((20, 20), bool))
    done = parse_response(absent.generate(request_for(np.zeros((20, 20), bool)), threading.Event()))
    assert done.action.kind == "terminate" and "absent" in done.answer


@pytest.fixture()
def square():
    """A bright square on a dark background, and the square as ground truth."""
    image = np.full((96, 96, 3), 30, np.uint8)
    image[30:70, 25:65] = 220
    truth = np.zeros((96, 96), bool)
    truth[30:70, 25:65] = True
    return image, truth


def test_random_walker_segments_from_clicks(square):
    image, truth = square
    tool = RandomWalkerTool()
    tool.set_image(image)
    result = tool.predict([Click(45, 50, True)], None)
    assert iou(truth, result.mask) > 0.9
    shrunk = tool.predict([Click(45, 50, True), Click(60, 35, False)], result.logits)
    assert not shrunk.mask[35, 60]
    with pytest.raises(ValueError):
        tool.predict([], None)


def test_oracle_with_the_classical_tool_converges(square):
    image, truth = square
    session = AgentSession(image, "segment the square", OraclePolicy(truth), RandomWalkerTool())
    trace = session.run()
    assert trace.stop_reason == "terminate" and iou(truth, session.mask) >= 0.85


def click_text(kind, x, y, think="reason"):
    return format_response(think, Action(kind, x, y))


def test_format_term():
    assert format_score(click_text("positive", 0.5, 0.5)) == 1
    assert format_score("<action>Positive Point (0.5000, 0.5000)</action>") == 0  # no reasoning
    assert format_score("<think>t</think><action>Terminate</action>") == 0  # terminating needs an answer
    assert format_score("<think>t</think><action>Termination</action><answer>ok</answer>") == 1
    assert format_score(click_text("positive", 0.5, 0.5) + "<answer>no</answer>") == 0


def test_answer_region_progress_terms(square):
    image, truth = square
    tool = RandomWalkerTool()
    start = RewardState(image, truth, (), step=1)
    inside = score_response(click_text("positive", 45 / 96, 50 / 96), start, tool)
    assert (inside.format, inside.answer, inside.region, inside.progress) == (1, 3, 1, 1)
    outside = score_response(click_text("positive", 5 / 96, 5 / 96), start, tool)
    assert (outside.region, outside.answer) == (-1, 0)
    wrong_polarity = score_response(click_text("negative", 45 / 96, 50 / 96), start, tool)
    assert wrong_polarity.region == -1
    # Fixed bug: progress compares with the IoU before the move (the authors' code rewarded any IoU > 0).
    after_good_click = RewardState(image, truth, (Click(45, 50, True),), step=2)
    redundant = score_response(click_text("positive", 46 / 96, 51 / 96), after_good_click, tool)
    assert redundant.progress == 0 and redundant.region == -1


def test_terminate_is_judged_by_the_mask_it_accepts(square):
    image, truth = square
    tool = RandomWalkerTool()
    answer = "<think>fits</think><action>Terminate</action><answer>done</answer>"
    good = score_response(answer, RewardState(image, truth, (Click(45, 50, True),), step=2), tool)
    assert (good.region, good.progress, good.answer) == (1, 1, 3)
    early = score_response(answer, RewardState(image, truth, (), step=1), tool)
    assert (early.region, early.progress, early.answer) == (-1, 0, 0)


def test_length_term_uses_the_step():
    assert [length_score(s) for s in (1, 5, 6, 8)] == pytest.approx([1, 1, -0.2, -0.6])


def test_reward_mask_is_the_mask_inference_produced(square):
    image, _ = square
    tool = RandomWalkerTool()
    outputs = [
        click_text("positive", 45 / 96, 50 / 96),
        click_text("negative", 60 / 96, 35 / 96),
        click_text("positive", 30 / 96, 65 / 96),
    ]
    session = AgentSession(image, "x", ReplayPolicy(outputs), tool, max_turns=3)
    session.run()
    assert np.array_equal(replay_mask(tool, image, session.clicks), session.mask)


def rl_record(square, folder):
    """The extra_info of a first-step RL row over the square, as our export writes it."""
    from IBISAgentLib.imaging.images import write_mask, write_rgb

    image, truth = square
    write_rgb(folder / "image.png", image)
    write_mask(folder / "mask.png", truth)
    return {
        "image": str(folder / "image.png"),
        "mask": str(folder / "mask.png"),
        "clicks": [],
        "step": 1,
        "tool": "classical",
    }


def test_verl_entry_point_reads_our_rl_rows(square, tmp_path):
    info = rl_record(square, tmp_path)
    result = compute_score("ibisagent", click_text("positive", 45 / 96, 50 / 96), None, info)
    assert result["score"] == pytest.approx((1 + 3 + 1 + 1 + 1) / 5)
    from IBISAgentLib.training.rewards import trl_reward

    assert trl_reward([[{"role": "assistant", "content": click_text("positive", 45 / 96, 50 / 96)}]], [info]) == [
        result["score"]
    ]


def test_rollout_env_runs_the_same_loop_as_the_cli(square, tmp_path):
    image, truth = square
    outputs = [click_text("positive", 45 / 96, 50 / 96), "garbage", click_text("negative", 60 / 96, 35 / 96),
               "<think>ok</think><action>Terminate</action><answer>done</answer>"]  # fmt: skip
    env = RolloutEnv(image, truth, "segment the square", RandomWalkerTool(), max_turns=10)
    observation = env.observation()
    assert observation.user_text == "<image>segment the square" and observation.system_prompt == IBIS_V1.system_prompt
    rewards = []
    for text in outputs:
        observation, terms, done = env.step(text)
        rewards.append(terms)
    assert done and observation is None and rewards[1].format == 0
    reference = AgentSession(image, "segment the square", ReplayPolicy(outputs), RandomWalkerTool(), max_turns=10)
    expected = reference.run().to_dict()
    actual = env.trace().to_dict()
    for trace in (expected, actual):
        trace.pop("models")
        for step in trace["steps"]:
            step.pop("timings_ms")
    assert json.dumps(actual, sort_keys=True) == json.dumps(expected, sort_keys=True)


def test_verl_loads_our_reward_file_standalone(square, tmp_path):
    """verl imports custom_reward_function.path with spec_from_file_location, outside any package."""
    import importlib.util

    from IBISAgentLib.training import verl_reward

    spec = importlib.util.spec_from_file_location("custom_module", verl_reward.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    info = rl_record(square, tmp_path)
    assert module.compute_score("ibisagent", click_text("positive", 45 / 96, 50 / 96), None, info)["answer"] == 3
