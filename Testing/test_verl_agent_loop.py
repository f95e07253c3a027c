"""Our verl agent loop on the real verl 0.9.1 (in .venv-verl, which scripts/install_verl.sh makes): an episode of
``ibisagent synth``'s episodes.parquet through verl's dataset, agent-loop and post-processing classes, with a
rollout server that answers given texts (vLLM needs a GPU). Checked against the product's own loop here."""

import json
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from qwen_vl_utils import process_vision_info
from test_cli import ibisagent
from transformers import AutoProcessor

from IBISAgentLib.imaging.images import read_mask, read_rgb_image, write_mask, write_rgb
from IBISAgentLib.policies.transformers_qwen import TransformersQwenPolicy
from IBISAgentLib.tools.classical import RandomWalkerTool
from IBISAgentLib.training.episodes import episode_return, shaped_reward
from IBISAgentLib.training.rollout import RolloutEnv

REPO = Path(__file__).resolve().parents[1]
VERL_PYTHON = REPO / ".venv-verl" / "bin" / "python"
TEXTS = [
    "<think>The disc is in the centre.</think><action>Positive Point (0.5, 0.5)</action>",
    "<think>The left edge is missed.</think><action>Positive Point (0.32, 0.5)</action>",
    "<think>The mask follows the disc.</think><action>Terminate</action><answer>Done.</answer>",
]


@pytest.fixture(scope="module")
def synthesized(tmp_path_factory):
    folder = tmp_path_factory.mktemp("verl")
    yy, xx = np.mgrid[:64, :64]
    disc = (yy - 32) ** 2 + (xx - 30) ** 2 <= 14**2
    image = np.full((64, 64, 3), 40, np.uint8)
    image[disc] = 210
    write_rgb(folder / "disc.png", image)
    write_mask(folder / "disc_mask.png", disc)
    row = {"id": "disc", "image": "disc.png", "mask": "disc_mask.png", "instruction": "Segment the bright disc."}
    (folder / "starts.jsonl").write_text(json.dumps(row) + "\n")
    result = ibisagent("synth", "--dataset", folder / "starts.jsonl", "--out", folder / "synth", "--tool", "classical")
    assert result.returncode == 0, result.stderr
    return folder / "synth"


@pytest.fixture(scope="module")
def episode(synthesized, tiny_models):
    assert VERL_PYTHON.exists(), "run scripts/install_verl.sh (scripts/install.sh does) to test the verl agent loop"
    texts = synthesized / "texts.json"
    texts.write_text(json.dumps(TEXTS))
    parquet = synthesized / "episodes.parquet"
    script = REPO / "Testing" / "verl_episode.py"
    result = subprocess.run([VERL_PYTHON, script, tiny_models[0], parquet, texts], capture_output=True, text=True,
                            cwd=REPO, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def product_episode(synthesized):
    """The same episode in the product's loop: each turn's request, and the reward terms."""
    start = pq.read_table(synthesized / "episodes.parquet").to_pylist()[0]["extra_info"]
    image = read_rgb_image(start["image"])
    env = RolloutEnv(image, read_mask(start["mask"], image.shape[:2]), start["instruction"], RandomWalkerTool())
    requests, terms = [], []
    for text in TEXTS:
        requests.append(env.session.next_request())
        _, turn_terms, done = env.step(text)
        terms.append(turn_terms)
    assert done
    return requests, terms


def test_every_turn_is_one_output_with_the_products_prompt(episode, synthesized, tiny_models):
    assert episode["agent_name"] == "ibis_agent" and episode["stop_reason"] == "terminate"
    assert len(episode["outputs"]) == 3 and episode["images_per_prompt"] == [1, 1, 1]
    requests, _ = product_episode(synthesized)
    processor = AutoProcessor.from_pretrained(tiny_models[0])
    for request, prompt_ids in zip(requests, episode["prompts"], strict=True):
        messages = TransformersQwenPolicy._messages(request)
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        images, _ = process_vision_info(messages)
        assert processor(text=[text], images=images)["input_ids"][0] == prompt_ids
    for output in episode["outputs"]:
        assert output["image_tokens"] == output["image_patches_merged"] > 0  # verl built this turn's image inputs
        assert output["position_ids"][0] == 4  # Qwen2.5-VL's M-RoPE positions over prompt and response
        assert output["response_mask"] == output["response_length"] > 0


def test_every_turn_carries_its_episodes_reward(episode, synthesized):
    _, terms = product_episode(synthesized)
    expected = episode_return(terms) + 0.5 * float(np.mean([shaped_reward(t) for t in terms]))
    assert episode["rewards"] == pytest.approx([expected] * 3)
    assert all(o["reward_on_last_token"] == pytest.approx(expected) and o["reward_elsewhere"] == 0
               for o in episode["outputs"])  # fmt: skip
    info = episode["reward_extra_info"]
    assert info["episode_turns"] == 3 and info["episode_return"] == pytest.approx(episode_return(terms))
    assert info["final_iou"] > 0.5


@pytest.mark.parametrize("mode", ["episodes", "single-turn"])
def test_the_launch_script_composes_with_verls_own_config(mode, synthesized, tiny_models, tmp_path):
    """The script's hydra overrides, caught on their way to verl's trainer, compose and validate in verl."""
    shim = tmp_path / "bin" / "python"
    shim.parent.mkdir()
    caught = tmp_path / "overrides.txt"
    shim.write_text(
        "#!/bin/sh\n"
        f'if [ "$1 $2" = "-m verl.trainer.main_ppo" ]; then shift 2; printf "%s\\n" "$@" > {caught}; exit 0; fi\n'
        f'exec {VERL_PYTHON} "$@"\n'
    )
    shim.chmod(0o755)
    script = REPO / "IBISAgentLib" / "training" / "verl_grpo.sh"
    env = {"PATH": f"{shim.parent}:/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run(["bash", script, mode, synthesized, synthesized, tiny_models[0]], env=env,
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr
    checked = subprocess.run([VERL_PYTHON, REPO / "Testing" / "verl_episode.py", "--launch", caught],
                             capture_output=True, text=True, cwd=REPO, timeout=600)  # fmt: skip
    assert checked.returncode == 0, checked.stderr[-3000:]
    composed = json.loads(checked.stdout.strip().splitlines()[-1])
    assert composed["kl"] is False and composed["reference_policy"] is False  # no KL, as in the paper
    if mode == "episodes":
        assert composed["use_v1"] is True and composed["train_files"] == f"{synthesized}/episodes.parquet"
        assert composed["loop"] == {"class": "IBISAgentLib.training.verl_agent_loop.IBISAgentLoop", "max_turns": 8}
    else:
        assert composed["train_files"] == f"{synthesized}/rl.parquet"
        assert composed["reward_file"].endswith("IBISAgentLib/training/verl_reward.py") and composed["loop"] is None
    bad = subprocess.run(["bash", script, "bogus", "a", "b", "c"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "episodes or single-turn" in bad.stderr
