"""Episode GRPO with TRL (``ibisagent train grpo``): the model learns from whole episodes of the product's
own loop, each turn seeing the mask its own earlier clicks produced.

Each dataset row is a start (a sample of the manifest); TRL's sampler repeats it G times
(``num_generations``), and each copy becomes one episode run by ``RolloutEnv``, so prompts, overlays,
click history, logits chaining and stop rules are the product's. Every turn of every episode becomes one
training sample, with its own prompt and image, and the advantage of ``episodes.py``.

TRL's extension points, and why these: ``rollout_func`` hands TRL the completions the episodes really
sampled (so TRL does not sample again), and one override of ``_generate_and_score_completions`` runs the
episodes, lays their turns out as rows (prompt + the image that turn saw) for TRL's own scoring pass (which
builds the image tensors, masks and old log-probabilities), then puts in the episode advantages. TRL 1.16
has no public way to do this: a bare ``rollout_func`` must return one completion per prompt and trains on the
dataset's image, not the turn's; ``environment_factory`` makes the episode one growing chat with a single
advantage and needs tool calling in the chat template. Turns are sampled with the trainer's own
``_generate_single_turn``: the trainer's model, or vLLM (``use_vllm``) with its weights synced.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..agent.interfaces import SegmentationTool
from ..agent.jsontext import dumps
from ..agent.prompts import IBIS_V1
from .episodes import EpisodeWeights, episode_return, group_advantages, shaped_reward
from .manifest import Sample
from .rewards import RewardTerms
from .rollout import Observation, RolloutEnv
from .sft_trl import LANGUAGE_LINEAR


@dataclass
class Turn:
    """One training sample: what one episode's policy saw at one turn, what it answered, how it did."""

    group: int  # the start it came from (its index in the batch's starts)
    episode: int  # its episode's index in the batch; -1 for a padding row, which trains nothing
    turn: int
    observation: Observation
    prompt_ids: list[int] | None = None
    completion_ids: list[int] | None = None
    logprobs: list[float] | None = None
    text: str = ""
    terms: RewardTerms | None = None
    episode_return: float | None = None
    advantage: float = 0.0

    @property
    def messages(self) -> list[dict[str, str]]:
        """The turn's prompt; TRL puts the image before the user text, the product's layout."""
        return [
            {"role": "system", "content": self.observation.system_prompt},
            {"role": "user", "content": self.observation.user_text},
        ]

    @property
    def image(self) -> Any:  # PIL.Image
        from PIL import Image

        return Image.fromarray(self.observation.image)


@functools.cache
def trainer_class() -> type:
    """The trainer, built on first use (TRL is imported only here)."""
    from trl import GRPOTrainer
    from trl.data_utils import prepare_multimodal_messages

    class EpisodeGRPOTrainer(GRPOTrainer):
        """TRL's GRPO trainer whose samples are the turns of G on-policy episodes per start."""

        def __init__(
            self,
            *args: Any,
            samples: list[Sample],
            tool: SegmentationTool,
            weights: EpisodeWeights | None = None,
            max_turns: int = 8,
            episode_log: Path | None = None,
            **kwargs: Any,
        ) -> None:
            super().__init__(*args, reward_funcs=[logged_return, logged_shaped], rollout_func=hand_back, **kwargs)
            self.samples, self.tool, self.max_turns = samples, tool, max_turns
            self.weights = weights or EpisodeWeights()
            self.episode_log = episode_log
            self.last_episodes: list[list[Turn]] = []
            self._rows: list[Turn] | None = None
            logging.getLogger("trl.trainer.grpo_trainer").addFilter(_padding_rows_have_no_reward)

        def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
            import torch

            episodes = self._run_episodes(inputs)
            turns = [turn for episode in episodes for turn in episode]
            rows = turns + self._padding(turns)
            self._rows = rows
            try:
                scored = super()._generate_and_score_completions([_row(turn) for turn in rows])
            finally:
                self._rows = None
            advantages = scored["advantages"]
            scored["advantages"] = torch.tensor(
                [row.advantage for row in rows], dtype=advantages.dtype, device=advantages.device
            )
            self.last_episodes = episodes
            return scored

        def _run_episodes(self, inputs: list[dict[str, Any]]) -> list[list[Turn]]:
            """One episode per row; rows come as G consecutive copies of each start (TRL's RepeatSampler)."""
            group_size = self.num_generations if self.model.training else self.num_generations_eval
            starts = [row["start"] for row in inputs]
            envs = [
                RolloutEnv(self.samples[s].image, self.samples[s].ground_truth, self.samples[s].task, self.tool,
                           max_turns=self.max_turns)
                for s in starts
            ]  # fmt: skip
            episodes: list[list[Turn]] = [[] for _ in envs]
            observations = [env.observation() for env in envs]
            live = list(range(len(envs)))
            turn = 0
            # Every process samples until all are done: vLLM server mode and sharded models sample together.
            while self._anyone_live(len(live)):
                asked = live or [0]  # a process with nothing left samples a throw-away turn
                batch = [Turn(i // group_size, i, turn, observations[i]) for i in asked]
                self._sample(batch)
                if not live:
                    continue
                still = []
                for step in batch:
                    step.text = self.processing_class.tokenizer.decode(step.completion_ids, skip_special_tokens=True)
                    observation, step.terms, done = envs[step.episode].step(step.text)
                    episodes[step.episode].append(step)
                    if not done:
                        observations[step.episode] = observation
                        still.append(step.episode)
                live, turn = still, turn + 1
            for group in range(len(envs) // group_size):
                members = range(group * group_size, (group + 1) * group_size)
                advantages = group_advantages([[t.terms for t in episodes[e]] for e in members], self.weights)
                for e, values in zip(members, advantages, strict=True):
                    total = episode_return([t.terms for t in episodes[e]])
                    for step, value in zip(episodes[e], values, strict=True):
                        step.advantage, step.episode_return = value, total
            self._log_episodes(envs, episodes, starts)
            for env in envs:
                env.session.close()
            return episodes

        def _sample(self, turns: list[Turn]) -> None:
            """Sample one completion for each turn with the trainer's model (or vLLM), as TRL samples."""
            prompts = [prepare_multimodal_messages(t.messages, images=[t.image]) for t in turns]
            prompt_ids, images, fields = self._tokenize_prompts(prompts)
            completion_ids, logprobs = self._generate_single_turn(prompt_ids, images, fields, num_generations=1)
            for index, turn in enumerate(turns):
                turn.prompt_ids = list(prompt_ids[index])
                turn.completion_ids = list(completion_ids[index])
                turn.logprobs = None if logprobs is None else list(logprobs[index])

        def _anyone_live(self, count: int) -> bool:
            import torch

            counts = self.accelerator.gather(torch.tensor([count], device=self.accelerator.device))
            return bool(counts.max() > 0)

        def _padding(self, turns: list[Turn]) -> list[Turn]:
            """Rows that train nothing, so every process has the same number of rows and a multiple of
            num_generations x steps_per_generation (TRL groups rewards by G and splits the batch evenly)."""
            import torch

            multiple = self.num_generations * self.args.steps_per_generation
            counts = self.accelerator.gather(torch.tensor([len(turns)], device=self.accelerator.device))
            target = math.ceil(int(counts.max()) / multiple) * multiple
            last = turns[-1]
            eos = self.processing_class.tokenizer.eos_token_id
            logprobs = None if last.logprobs is None else [0.0]
            return [
                Turn(last.group, -1, -1, last.observation, last.prompt_ids, [eos], logprobs)
                for _ in range(target - len(turns))
            ]

        def _log_episodes(self, envs: list[RolloutEnv], episodes: list[list[Turn]], starts: list[int]) -> None:
            """Each episode's trace (the product's schema), return and advantages, one JSON line each."""
            if self.episode_log is None or not self.accelerator.is_main_process:
                return
            self.episode_log.parent.mkdir(parents=True, exist_ok=True)
            with self.episode_log.open("a", encoding="utf-8") as log:
                for env, episode, start in zip(envs, episodes, starts, strict=True):
                    record = {
                        "step": self.state.global_step,
                        "start": start,
                        "group": episode[0].group,
                        "return": episode[0].episode_return,
                        "advantages": [t.advantage for t in episode],
                        "terms": [vars(t.terms) for t in episode],
                        "trace": env.trace().to_dict(),
                    }
                    log.write(dumps(record) + "\n")

    return EpisodeGRPOTrainer


def _row(turn: Turn) -> dict[str, Any]:
    """A turn as TRL's scoring pass reads it: its prompt, its image, and what the logged rewards show."""
    shaped = None if turn.terms is None else shaped_reward(turn.terms)
    return {
        "prompt": turn.messages,
        "images": [turn.image],
        "episode_return": turn.episode_return,
        "turn_reward": shaped,
    }


def hand_back(prompts: list[Any], trainer: Any) -> dict[str, Any]:
    """TRL's ``rollout_func``: the turns were sampled during the episodes; return what they sampled."""
    rows: list[Turn] | None = trainer._rows
    if rows is None or len(rows) != len(prompts):
        raise RuntimeError("the episode rollout was called outside EpisodeGRPOTrainer's scoring pass")
    logprobs = None if any(row.logprobs is None for row in rows) else [row.logprobs for row in rows]
    return {
        "prompt_ids": [row.prompt_ids for row in rows],
        "completion_ids": [row.completion_ids for row in rows],
        "logprobs": logprobs,
        "env_mask": [[0 if row.episode < 0 else 1] * len(row.completion_ids) for row in rows],
    }


def logged_return(episode_return: list[float | None], **_: Any) -> list[float | None]:
    """TRL's logs only (rewards/logged_return): the episode return of each row's episode."""
    return episode_return


def logged_shaped(turn_reward: list[float | None], **_: Any) -> list[float | None]:
    """TRL's logs only (rewards/logged_shaped): each turn's shaped reward."""
    return turn_reward


def _padding_rows_have_no_reward(record: logging.LogRecord) -> bool:
    """Padding rows return no reward by design; TRL would warn about each batch, with the row's content."""
    return not record.getMessage().startswith("All reward functions returned None")


def train(
    samples: list[Sample],
    tool: SegmentationTool,
    model_dir: Path,
    out: Path,
    *,
    weights: EpisodeWeights | None = None,
    group_size: int = 4,
    starts_per_step: int = 1,
    max_turns: int = 8,
    max_steps: int = -1,
    epochs: float = 1.0,
    learning_rate: float = 1e-6,
    lora_rank: int = 8,
    max_completion_length: int = 512,
    temperature: float = 1.0,
    vllm: str | None = None,
    seed: int = 0,
    trainer_type: type | None = None,
) -> Path:
    """Run episode GRPO and save the LoRA adapter (or the full model with ``lora_rank`` 0) to ``out``;
    ``out/episodes.jsonl`` logs every episode. ``vllm``: None (the trainer's model samples), "colocate" or
    "server" (TRL's vLLM modes). ``trainer_type``: a subclass of ``trainer_class()`` to use instead."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration
    from trl import GRPOConfig

    on_gpu = torch.cuda.is_available()
    processor = AutoProcessor.from_pretrained(model_dir, padding_side="left")
    processor.image_processor.size = {"longest_edge": IBIS_V1.max_pixels, "shortest_edge": IBIS_V1.min_pixels}
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        model_dir, dtype=torch.bfloat16 if on_gpu else torch.float32
    )
    config = GRPOConfig(
        output_dir=str(out),
        per_device_train_batch_size=group_size * starts_per_step,
        num_generations=group_size,
        max_completion_length=max_completion_length,
        temperature=temperature,
        num_train_epochs=epochs,
        max_steps=max_steps,
        learning_rate=learning_rate,
        beta=0.0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        bf16=on_gpu,
        use_cpu=not on_gpu,
        use_vllm=vllm is not None,
        vllm_mode=vllm or "colocate",
        seed=seed,
    )
    peft = (
        LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, target_modules=LANGUAGE_LINEAR, task_type="CAUSAL_LM")
        if lora_rank > 0
        else None
    )
    # TRL needs a prompt column; the episodes make their own prompts from the start's sample.
    starts = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": s.task}], "start": i} for i, s in enumerate(samples)]
    )
    trainer = (trainer_type or trainer_class())(
        model=model, args=config, train_dataset=starts, processing_class=processor, peft_config=peft,
        samples=samples, tool=tool, weights=weights, max_turns=max_turns, episode_log=out / "episodes.jsonl",
    )  # fmt: skip
    trainer.train()
    trainer.save_model(str(out))
    return out
