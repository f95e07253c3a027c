"""Run one episode of IBISAgentLoop through verl's own classes (run by test_verl_agent_loop.py in .venv-verl).

The row comes from an ``episodes.parquet`` that ``ibisagent synth`` wrote, read with verl's RLHFDataset and
collate_fn as its workers read it; the loop is built the way verl's AgentLoopWorker builds it; verl's V1
post-processing (multimodal inputs, M-RoPE positions, reward placement) runs on every output. Only the
rollout server is replaced, by one that answers with given texts, since vLLM needs a GPU. Prints JSON.

    .venv-verl/bin/python Testing/verl_episode.py MODEL_DIR EPISODES.parquet TEXTS.json

With ``--launch OVERRIDES.txt`` (the hydra overrides our launch script passes, one a line) it composes verl's
trainer config with them, validates it as verl's trainer does, and builds the default agent loop from the
loop config the way verl's workers do.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import torch
import verl
from omegaconf import OmegaConf
from verl.experimental.agent_loop.agent_loop import AgentLoopWorker, DictConfigWrap, ToolListWrap
from verl.utils.dataset.rl_dataset import RLHFDataset, collate_fn
from verl.utils.tokenizer import hf_processor, hf_tokenizer
from verl.workers.rollout.replica import TokenOutput

from IBISAgentLib.training.verl_agent_loop import IBISAgentLoop


class ScriptedServer:
    """Answers each turn with the next text, as token ids ending in <|im_end|>, like verl's vLLM server."""

    def __init__(self, tokenizer, texts: list[str]) -> None:
        self.tokenizer, self.texts, self.prompts = tokenizer, list(texts), []

    async def generate(self, request_id, *, prompt_ids, sampling_params, image_data=None, **_) -> TokenOutput:
        self.prompts.append((list(prompt_ids), image_data))
        ids = self.tokenizer.encode(self.texts.pop(0), add_special_tokens=False)
        ids.append(self.tokenizer.convert_tokens_to_ids("<|im_end|>"))
        return TokenOutput(token_ids=ids, log_probs=[-0.5] * len(ids), stop_reason="completed")


def config():
    base = OmegaConf.load(Path(verl.__file__).parent / "trainer/config/_generated_ppo_trainer.yaml")
    return OmegaConf.merge(
        base,
        {
            "data": {"max_prompt_length": 2048, "max_response_length": 512},
            "actor_rollout_ref": {"rollout": {"name": "vllm", "prompt_length": 2048, "response_length": 512}},
            "trainer": {"use_v1": True},
        },
    )


def postprocess(worker: AgentLoopWorker, output) -> dict:
    """What verl's V1 worker does with one output: multimodal inputs, positions, tensors."""
    input_ids = torch.tensor(output.prompt_ids + output.response_ids)
    inputs = worker._compute_multi_modal_inputs(output, input_ids)
    positions = worker._compute_position_ids(
        input_ids.unsqueeze(0), torch.ones_like(input_ids).unsqueeze(0), inputs
    ).squeeze(0)
    tensors = output.as_dict()
    pad = worker.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    return {
        "image_tokens": int((input_ids == pad).sum()),
        "image_patches_merged": int(inputs["pixel_values"].shape[0] // 4),
        "position_ids": list(positions.shape),
        "reward_on_last_token": float(tensors["rm_scores"][-1]),
        "reward_elsewhere": float(tensors["rm_scores"][:-1].abs().sum()),
        "response_mask": int(sum(output.response_mask)),
        "response_length": len(output.response_ids),
    }


async def episode(model: str, parquet: str, texts: list[str]) -> dict:
    tokenizer, processor = hf_tokenizer(model), hf_processor(model)
    settings = config()
    data = OmegaConf.create({"prompt_key": "prompt", "max_prompt_length": 2048, "filter_overlong_prompts_workers": 1,
                             "cache_dir": str(Path(parquet).parent / "verl-cache")})  # fmt: skip
    batch = collate_fn([RLHFDataset(parquet, tokenizer, data, processor)[0]])
    row = {key: value[0] for key, value in batch.items() if key not in ("dummy_tensor", "agent_name")}
    server = ScriptedServer(tokenizer, texts)
    loop = IBISAgentLoop(
        trainer_config=DictConfigWrap(settings), server_manager=server, tokenizer=tokenizer, processor=processor,
        dataset_cls=RLHFDataset, data_config=DictConfigWrap(settings.data), hf_model_type="qwen2_5_vl",
        tools=ToolListWrap([]), name="ibis_agent", max_turns=6,
    )  # fmt: skip
    outputs = await loop.run({"temperature": 1.0, "logprobs": True}, **row, uid="u0", session_id=0, global_steps=1)
    worker = object.__new__(AgentLoopWorker)  # only what its post-processing reads
    worker.config, worker.tokenizer, worker.processor = settings, tokenizer, processor
    worker.rollout_config, worker.mm_processor_kwargs = settings.actor_rollout_ref.rollout, {}
    return {
        "agent_name": batch["agent_name"][0],
        "outputs": [postprocess(worker, output) for output in outputs],
        "reward": outputs[-1].reward_score,
        "rewards": [output.reward_score for output in outputs],
        "reward_extra_info": outputs[-1].extra_fields["reward_extra_info"],
        "stop_reason": outputs[-1].extra_fields["stop_reason"],
        "prompts": [ids for ids, _ in server.prompts],
        "images_per_prompt": [len(images) for _, images in server.prompts],
    }


async def launch(overrides_file: str) -> dict:
    import hydra
    from hydra import compose, initialize_config_dir
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    overrides = Path(overrides_file).read_text(encoding="utf-8").splitlines()
    with initialize_config_dir(config_dir=str(Path(verl.__file__).parent / "trainer/config"), version_base=None):
        settings = compose(config_name="ppo_trainer", overrides=overrides)
    reference, critic = need_reference_policy(settings), need_critic(settings)
    validate_config(config=settings, use_reference_policy=reference, use_critic=critic)
    rollout = settings.actor_rollout_ref.rollout
    built = None
    if rollout.agent.agent_loop_config_path:
        loops = {entry.name: entry for entry in OmegaConf.load(rollout.agent.agent_loop_config_path)}
        model = settings.actor_rollout_ref.model.path
        loop = hydra.utils.instantiate(
            config=loops[rollout.agent.default_agent_loop], trainer_config=DictConfigWrap(settings),
            server_manager=None, tokenizer=hf_tokenizer(model), processor=hf_processor(model),
            hf_model_type="qwen2_5_vl", dataset_cls=RLHFDataset, data_config=DictConfigWrap(settings.data),
            tools=ToolListWrap([]),
        )  # fmt: skip
        built = {"class": f"{type(loop).__module__}.{type(loop).__name__}", "max_turns": loop.max_turns}
    return {
        "use_v1": settings.trainer.use_v1,
        "kl": settings.algorithm.use_kl_in_reward or settings.actor_rollout_ref.actor.use_kl_loss,
        "reference_policy": reference,
        "reward_file": settings.custom_reward_function.path,
        "train_files": settings.data.train_files,
        "loop": built,
    }


if __name__ == "__main__":
    if sys.argv[1] == "--launch":
        print(json.dumps(asyncio.run(launch(sys.argv[2]))))
    else:
        model, parquet, texts = sys.argv[1], sys.argv[2], json.loads(Path(sys.argv[3]).read_text(encoding="utf-8"))
        print(json.dumps(asyncio.run(episode(model, parquet, texts))))
