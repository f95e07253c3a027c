"""A LoRA adapter from ``ibisagent train sft|grpo`` folded into its base model: a plain Qwen2.5-VL folder that
``train grpo``, ``segment --mllm`` and vLLM load like any other (vLLM serves merged weights best)."""

from __future__ import annotations

import json
from pathlib import Path


class MergeError(ValueError):
    pass


def merge_adapter(adapter: Path, out: Path, base: Path | None = None) -> Path:
    """Write the merged model and the adapter's processor to ``out``. ``base`` defaults to the model the
    adapter was trained on, as the adapter records it."""
    import torch
    from peft import PeftModel
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    config = adapter / "adapter_config.json"
    if not config.is_file():
        raise MergeError(f"{adapter}: not a LoRA adapter folder (no adapter_config.json)")
    base = base or Path(json.loads(config.read_text(encoding="utf-8"))["base_model_name_or_path"])
    if not (base / "config.json").is_file():
        raise MergeError(f"{base}: the adapter's base model is not here; name it with --base")
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        base, dtype=torch.bfloat16 if torch.cuda.is_available() else torch.float32
    )
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    merged.save_pretrained(out)
    AutoProcessor.from_pretrained(adapter if (adapter / "processor_config.json").is_file() else base).save_pretrained(
        out
    )
    return out
