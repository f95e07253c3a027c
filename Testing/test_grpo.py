"""Episode GRPO with TRL: two optimizer steps on the tiny Qwen2.5-VL with the random-walker tool, on CPU,
over episodes of several turns run by the product's own session."""

import json
import math

import numpy as np
import pytest
from safetensors.torch import load_file

from IBISAgentLib.agent.actions import Action, format_response
from IBISAgentLib.agent.interfaces import Click, PolicyRequest
from IBISAgentLib.agent.prompts import IBIS_V1
from IBISAgentLib.imaging.images import write_mask, write_rgb
from IBISAgentLib.imaging.rendering import overlay_mask
from IBISAgentLib.tools.classical import RandomWalkerTool
from IBISAgentLib.training.episodes import EpisodeWeights, episode_return, group_advantages
from IBISAgentLib.training.manifest import load_sample, read_manifest
from IBISAgentLib.training.rewards import RewardTerms, replay_mask

GROUP = 4
SCRIPTED_TURNS = 2


@pytest.fixture(scope="module")
def starts(tmp_path_factory):
    """A manifest of two 64 x 64 starts, a bright disc each."""
    folder = tmp_path_factory.mktemp("starts")
    rows = []
    for index, (cx, cy, r) in enumerate([(30, 32, 14), (36, 28, 12)]):
        yy, xx = np.mgrid[:64, :64]
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
        image = np.full((64, 64, 3), 40, np.uint8)
        image[disc] = 220
        write_rgb(folder / f"{index}.png", image)
        write_mask(folder / f"{index}_mask.png", disc)
        rows.append({"image": f"{index}.png", "mask": f"{index}_mask.png", "target": "bright disc"})
    (folder / "starts.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder / "starts.jsonl"


@pytest.fixture(scope="module")
def samples(starts):
    return [load_sample(record) for record in read_manifest(starts)]


def scripted_text(group: int, episode: int, turn: int) -> str:
    """Well-formed moves, different for every episode; the fourth episode of a group stops at its second turn."""
    if episode % GROUP == 3 and turn == 1:
        return format_response("Looks done.", Action("terminate"), "done")
    x, y = np.random.default_rng(100 * group + 10 * (episode % GROUP) + turn).uniform(0.2, 0.8, 2)
    kind = "negative" if episode % GROUP == 2 and turn == 1 else "positive"
    return format_response("A scripted move.", Action(kind, round(float(x), 4), round(float(y), 4)))


@pytest.fixture(scope="module")
def run(samples, tiny_models, tmp_path_factory):
    """Train two steps; the first two turns of every episode are scripted (the tiny model writes noise), the
    later turns are the model's own samples. Returns the trainer and what each turn saw."""
    from IBISAgentLib.training.grpo_trl import train, trainer_class

    made = []

    class Scripted(trainer_class()):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.seen = []  # (step, episode, turn, the image that turn was shown)
            self.batches = []  # (episodes, TRL's scored batch)
            made.append(self)

        def _sample(self, turns):
            super()._sample(turns)
            tokenizer = self.processing_class.tokenizer
            for turn in turns:
                self.seen.append((self.state.global_step, turn.episode, turn.turn, turn.observation.image.copy()))
                if turn.turn < SCRIPTED_TURNS:
                    text = scripted_text(turn.group, turn.episode, turn.turn)
                    turn.completion_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
                    turn.completion_ids.append(tokenizer.eos_token_id)
                    turn.logprobs = None

        def _generate_and_score_completions(self, inputs):
            scored = super()._generate_and_score_completions(inputs)
            self.batches.append((self.last_episodes, scored))
            return scored

    out = tmp_path_factory.mktemp("grpo")
    train(samples, RandomWalkerTool(), tiny_models[0], out, weights=EpisodeWeights(1.0, 0.5), group_size=GROUP,
          max_turns=6, max_steps=2, learning_rate=1e-3, max_completion_length=16, trainer_type=Scripted)  # fmt: skip
    return made[0], out


def test_two_steps_train_the_lora_weights_with_a_finite_loss(run):
    scripted, out = run
    losses = [entry["loss"] for entry in scripted.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    adapter = load_file(str(out / "adapter_model.safetensors"))
    lora_b = [tensor for name, tensor in adapter.items() if "lora_B" in name]
    assert lora_b and any(tensor.abs().max() > 0 for tensor in lora_b)  # LoRA B starts at zero


def test_episodes_have_several_turns_and_the_model_samples_the_later_ones(run):
    scripted, _ = run
    for episodes, _ in scripted.batches:
        lengths = [len(episode) for episode in episodes]
        assert len(episodes) == GROUP and min(lengths) >= 2 and max(lengths) > 2
        unscripted = [turn for episode in episodes for turn in episode if turn.turn >= SCRIPTED_TURNS]
        assert unscripted and all(turn.completion_ids for turn in unscripted)


def test_each_turn_is_trained_with_its_own_episodes_advantage(run):
    scripted, out = run
    weights = EpisodeWeights(1.0, 0.5)
    logged = [json.loads(line) for line in (out / "episodes.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(logged) == 2 * GROUP
    for step, (episodes, scored) in enumerate(scripted.batches):
        terms = [[turn.terms for turn in episode] for episode in episodes]
        returns = [episode_return(t) for t in terms]
        assert len(set(returns)) > 1  # the episodes of the group did differently
        expected = [value for values in group_advantages(terms, weights) for value in values]
        trained = scored["advantages"].tolist()
        assert trained[: len(expected)] == pytest.approx(expected, abs=1e-5)
        assert all(value == 0 for value in trained[len(expected) :])  # padding rows train nothing
        rows = [turn for episode in episodes for turn in episode]
        for row, completion, mask in zip(rows, scored["completion_ids"], scored["completion_mask"], strict=False):
            assert completion[mask.bool()].tolist() == row.completion_ids  # the tokens this episode acted on
        for episode, record in zip(episodes, logged[step * GROUP : (step + 1) * GROUP], strict=True):
            assert record["return"] == pytest.approx(episode_return([turn.terms for turn in episode]))
            assert record["advantages"] == pytest.approx([turn.advantage for turn in episode])
            assert [RewardTerms(**t) for t in record["terms"]] == [turn.terms for turn in episode]


def test_each_turn_saw_the_overlay_of_its_own_episodes_earlier_clicks(run, samples):
    scripted, out = run
    logged = [json.loads(line) for line in (out / "episodes.jsonl").read_text(encoding="utf-8").splitlines()]
    shown = {(step, episode, turn): image for step, episode, turn, image in scripted.seen}
    tool, changed = RandomWalkerTool(), 0
    for step in range(2):
        for episode, record in enumerate(logged[step * GROUP : (step + 1) * GROUP]):
            start = samples[record["start"]]
            clicks = []
            for turn, move in enumerate(record["trace"]["steps"]):
                mask = replay_mask(tool, start.image, clicks)
                expected = overlay_mask(start.image, mask, IBIS_V1.overlay_color, IBIS_V1.overlay_alpha)
                assert np.array_equal(shown[(step, episode, turn)], expected)
                changed += turn > 0 and not np.array_equal(expected, start.image)
                if move["pixel"] is not None:
                    clicks.append(Click(*move["pixel"], move["action"]["kind"] == "positive"))
    assert changed > 0


def test_the_turn_prompt_is_the_products(run, tiny_models):
    """What TRL tokenizes for a turn equals what the product's Qwen policy sends for the same request."""
    from qwen_vl_utils import process_vision_info
    from transformers import AutoProcessor

    from IBISAgentLib.policies.transformers_qwen import TransformersQwenPolicy

    scripted, _ = run
    turn = scripted.batches[0][0][0][1]
    observation = turn.observation
    request = PolicyRequest(observation.system_prompt, observation.user_text, observation.image,
                            IBIS_V1.max_new_tokens, IBIS_V1.max_pixels, IBIS_V1.min_pixels)  # fmt: skip
    processor = AutoProcessor.from_pretrained(tiny_models[0])
    messages = TransformersQwenPolicy._messages(request)
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    images, _ = process_vision_info(messages)
    product = processor(text=[text], images=images)["input_ids"][0]
    assert list(product) == turn.prompt_ids


def test_train_grpo_from_the_command_line(starts, tiny_models, tmp_path):
    """The tiny model's own episodes (noise: two unreadable turns each), one step, LoRA written."""
    from test_cli import ibisagent

    common = ("train", "grpo", "--dataset", starts, "--tool", "classical", "--max-completion-length", "8")
    result = ibisagent(*common, "--model", tiny_models[0], "--out", tmp_path, "--max-steps", "1", "--group", "2")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "adapter_model.safetensors").is_file()
    logged = [json.loads(line) for line in (tmp_path / "episodes.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(logged) == 2 and {record["trace"]["stop_reason"] for record in logged} <= {"unparseable", "max_turns"}

    merged = ibisagent("train", "merge", tmp_path, "--out", tmp_path / "merged")
    assert merged.returncode == 0, merged.stderr
    again = ibisagent(*common, "--model", tmp_path / "merged", "--out", tmp_path / "again", "--max-steps", "1")
    assert again.returncode == 0, again.stderr  # a merged model trains on, like any Qwen2.5-VL folder
    not_adapter = ibisagent("train", "merge", tmp_path / "merged", "--out", tmp_path / "m2")
    assert not_adapter.returncode == 2 and "not a LoRA adapter" in not_adapter.stderr

    missing = ibisagent("train", "grpo", "--dataset", starts, "--model", tmp_path / "nothing", "--out", tmp_path)
    assert missing.returncode == 2 and "--model" in missing.stderr
    single = ibisagent(*common, "--model", tiny_models[0], "--out", tmp_path, "--group", "1")
    assert single.returncode == 2 and "--group" in single.stderr
