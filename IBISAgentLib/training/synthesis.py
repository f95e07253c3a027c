"""Cold-start trajectories: the oracle clicker drives the real loop, every turn becomes a training record.

For each manifest sample the oracle plays the agent on the same session class the product runs, with the
chosen tool (MedSAM2 or the classical one). Each agent turn becomes an SFT example in the model's own
format (the overlay image as it saw it, the ibis-v1 system prompt, an instruction from the category
library, reasoning + action as the answer) and an RL state (click history with labels, previous IoU,
step index) for GRPO.

Reasoning comes from a teacher model on an OpenAI-compatible endpoint, shown the oracle's view (true
positives green, false positives red, misses blue) and the agent's view (the green mask only), or, when
no teacher is given, from deterministic templates.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..agent import jsontext
from ..agent.actions import format_response, parse_response
from ..agent.interfaces import Policy, PolicyRequest, SegmentationTool
from ..agent.prompts import IBIS_V1
from ..agent.session import AgentSession
from ..imaging.images import write_mask, write_rgb
from .instructions import initial_instruction, refinement_text
from .manifest import Sample
from .oracle import OraclePolicy, iou

TEACHER_PROMPT = (
    "You write the reasoning of a medical segmentation agent. The first image is the agent's view: the "
    "current mask in semi-transparent green. The second is the expert view: correct mask pixels green, "
    "wrongly included pixels red, missed target pixels blue. The agent's next move is given. Write the "
    "concise reasoning the agent should have, from what is visible in the agent's view only (never mention "
    "colours red or blue, the expert view, or ground truth), ending with why this move is right."
)


class RecordingPolicy:
    """Passes turns to another policy and keeps every (request, output) pair."""

    def __init__(self, inner: Policy) -> None:
        self.inner = inner
        self.description = inner.description
        self.turns: list[tuple[PolicyRequest, str]] = []

    def generate(self, request: PolicyRequest, cancel: threading.Event) -> str:
        output = self.inner.generate(request, cancel)
        self.turns.append((request, output))
        return output


def oracle_view(image: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Correct pixels green, false positives red, false negatives blue (alpha 0.4, as the agent's overlay)."""
    from ..imaging.rendering import overlay_mask

    view = overlay_mask(image, truth & mask, (34, 139, 34), 0.4)
    view = overlay_mask(view, ~truth & mask, (220, 20, 60), 0.4)
    return overlay_mask(view, truth & ~mask, (30, 144, 255), 0.4)


def template_reasoning(target: str, action_text: str, mask: np.ndarray, truth: np.ndarray, rng: random.Random) -> str:
    """Reasoning in the agent's voice, from the action and coarse mask statistics."""
    parsed = parse_response(action_text).action
    if parsed is None or parsed.kind == "terminate":
        if not truth.any():
            return f"I look for the {target} but cannot see it in this image, so there is nothing to segment."
        return f"The green mask follows the boundary of the {target} closely; no region is missed or wrongly included."
    where = _place(parsed.x, parsed.y)
    if not mask.any():
        openers = (
            f"There is no mask yet. The {target} is visible {where}.",
            f"This is the first step; I find the {target} {where}.",
        )
        return f"{rng.choice(openers)} I place a positive point on a clear part of it."
    if parsed.kind == "positive":
        return f"The green mask misses part of the {target} {where}. A positive point there should extend the mask."
    return f"The green mask spills beyond the {target} {where}. A negative point there should remove that area."


def _place(x: float, y: float) -> str:
    vertical = "upper" if y < 1 / 3 else "lower" if y > 2 / 3 else "middle"
    horizontal = "left" if x < 1 / 3 else "right" if x > 2 / 3 else "central"
    return (
        "in the centre of the image"
        if (vertical, horizontal) == ("middle", "central")
        else f"in the {vertical} {horizontal} part"
    )


@dataclass
class Teacher:
    """Reasoning from a multimodal model behind an OpenAI-compatible endpoint."""

    url: str
    model: str | None = None
    api_key: str | None = None
    _client: Any = field(default=None, init=False, repr=False)

    def reasoning(self, agent_view: np.ndarray, expert_view: np.ndarray, instruction: str, action: str) -> str:
        from ..policies.openai_http import OpenAIChatPolicy, image_part

        if self._client is None:
            self._client = OpenAIChatPolicy(self.url, model=self.model, api_key=self.api_key)
        parts = [
            image_part(agent_view, IBIS_V1.max_pixels, IBIS_V1.min_pixels),
            image_part(expert_view, IBIS_V1.max_pixels, IBIS_V1.min_pixels),
            {"type": "text", "text": f"Instruction: {instruction}\nThe agent's move: {action}"},
        ]
        messages = [{"role": "system", "content": TEACHER_PROMPT}, {"role": "user", "content": parts}]
        return self._client.chat(messages, max_tokens=400).strip()


@dataclass
class SynthesisOutput:
    sft: list[dict] = field(default_factory=list)
    rl: list[dict] = field(default_factory=list)
    episodes: list[dict] = field(default_factory=list)
    traces: list[dict] = field(default_factory=list)


def synthesize_sample(
    sample: Sample,
    tool: SegmentationTool,
    out: Path,
    rng: random.Random,
    teacher: Teacher | None = None,
    tool_name: str = "classical",
    threshold: float = 0.85,
    max_turns: int = 20,
) -> SynthesisOutput:
    """Run the oracle on one sample and turn its turns into SFT and RL records (images written to ``out``)."""
    category, instruction = (
        ("manifest", sample.instruction)
        if sample.instruction
        else initial_instruction(sample.target, sample.modality, rng)
    )
    recorder = RecordingPolicy(OraclePolicy(sample.ground_truth, threshold))
    session = AgentSession(sample.image, instruction, recorder, tool, max_turns=max_turns, image_source=sample.id)
    trace = session.run()
    base, truth_file = out / "images" / f"{sample.id}.png", out / "masks" / f"{sample.id}.png"
    write_rgb(base, sample.image)
    write_mask(truth_file, sample.ground_truth)
    result = SynthesisOutput(traces=[trace.to_dict() | {"instruction_category": category}])
    result.episodes.append(
        {
            "data_source": "ibisagent",
            "agent_name": "ibis_agent",
            # For verl's bookkeeping only: the agent loop builds each turn's prompt itself.
            "prompt": [
                {"role": "system", "content": IBIS_V1.system_prompt},
                {"role": "user", "content": IBIS_V1.user_text(instruction, refinement=False)},
            ],
            "ability": "segmentation",
            "reward_model": {"style": "rule", "ground_truth": str(truth_file.relative_to(out))},
            "extra_info": {
                "image": str(base.resolve()),
                "mask": str(truth_file.resolve()),
                "instruction": instruction,
                "tool": tool_name,
                "sample": sample.id,
            },
        }
    )
    for step_index, (request, output) in enumerate(recorder.turns, start=1):
        seen = out / "images" / f"{sample.id}_step{step_index:02d}.png"
        write_rgb(seen, request.image)
        mask = request.mask if request.mask is not None else np.zeros(sample.ground_truth.shape, bool)
        if step_index == 1:
            user_text = IBIS_V1.user_text(instruction, refinement=False)
        else:
            user_text = refinement_text(instruction, rng)[1]
        action_only = output[output.index("<action>") :]
        if teacher is not None:
            view = oracle_view(sample.image, sample.ground_truth, mask)
            think = teacher.reasoning(request.image, view, instruction, action_only)
        else:
            think = template_reasoning(sample.target, output, mask, sample.ground_truth, rng)
        parsed = parse_response(output)
        response = format_response(think, parsed.action, parsed.answer)
        relative = str(seen.relative_to(out))
        result.sft.append(
            {"id": f"{sample.id}-{step_index}", "user": user_text, "response": response, "image": relative}
        )
        result.rl.append(
            {
                "data_source": "ibisagent",
                "prompt": [
                    {"role": "system", "content": IBIS_V1.system_prompt},
                    {"role": "user", "content": user_text},
                ],
                "images": [{"bytes": seen.read_bytes(), "path": relative}],
                "ability": "segmentation",
                "reward_model": {"style": "rule", "ground_truth": str(truth_file.relative_to(out))},
                "extra_info": {
                    "image": str(base.resolve()),
                    "mask": str(truth_file.resolve()),
                    "clicks": [[c.x, c.y, int(c.positive)] for c in request.clicks],
                    "prev_iou": iou(sample.ground_truth, mask),
                    "step": step_index,
                    "tool": tool_name,
                    "sample": sample.id,
                },
            }
        )
    return result


def write_datasets(out: Path, records: SynthesisOutput) -> dict[str, Path]:
    """SFT for LLaMA-Factory (ShareGPT + dataset_info.json) and TRL (messages + images), RL for verl (one
    state a row for the single-turn recipe; one start a row for the agent loop)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    llama = [
        {
            "messages": [
                {"role": "system", "content": IBIS_V1.system_prompt},
                {"role": "user", "content": r["user"]},
                {"role": "assistant", "content": r["response"]},
            ],
            "images": [r["image"]],
        }
        for r in records.sft
    ]
    paths = {
        "llamafactory": out / "sft_llamafactory.json",
        "dataset_info": out / "dataset_info.json",
        "trl": out / "sft_trl.jsonl",
        "rl": out / "rl.parquet",
        "episodes": out / "episodes.parquet",
        "traces": out / "trajectories.jsonl",
    }
    paths["llamafactory"].write_text(jsontext.dumps(llama, indent=1), encoding="utf-8")
    info = {
        "ibisagent_sft": {
            "file_name": paths["llamafactory"].name,
            "formatting": "sharegpt",
            "columns": {"messages": "messages", "images": "images"},
            "tags": {
                "role_tag": "role",
                "content_tag": "content",
                "user_tag": "user",
                "assistant_tag": "assistant",
                "system_tag": "system",
            },
        }
    }
    paths["dataset_info"].write_text(json.dumps(info, indent=2), encoding="utf-8")
    with paths["trl"].open("w", encoding="utf-8") as handle:
        for r in records.sft:
            messages = [
                {"role": "system", "content": [{"type": "text", "text": IBIS_V1.system_prompt}]},
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": r["user"]}]},
                {"role": "assistant", "content": [{"type": "text", "text": r["response"]}]},
            ]
            handle.write(jsontext.dumps({"messages": messages, "images": [r["image"]]}) + "\n")
    for rows, path in ((records.rl, paths["rl"]), (records.episodes, paths["episodes"])):
        for index, row in enumerate(rows):
            row["extra_info"]["index"] = index
        pq.write_table(pa.Table.from_pylist(rows), path)
    with paths["traces"].open("w", encoding="utf-8") as handle:
        for trace in records.traces:
            handle.write(jsontext.dumps(trace) + "\n")
    return paths


def synthesize(
    samples: list[Sample],
    tool: SegmentationTool,
    out: Path,
    teacher: Teacher | None = None,
    tool_name: str = "classical",
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Path]:
    records = SynthesisOutput()
    for index, sample in enumerate(samples):
        rng = random.Random(f"{seed}-{sample.id}")
        one = synthesize_sample(sample, tool, out, rng, teacher, tool_name)
        records.sft += one.sft
        records.rl += one.rl
        records.episodes += one.episodes
        records.traces += one.traces
        if progress is not None:
            progress(index + 1)
    return write_datasets(out, records)
