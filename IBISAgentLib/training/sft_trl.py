"""Supervised fine-tuning on synthesized trajectories with TRL: LoRA on every linear layer of the
language model, vision tower frozen, cosine schedule, bf16 on GPU (the authors' recipe, DESIGN.md §4).

    ibisagent train sft --data SYNTH_DIR --model QWEN_DIR --out RUN_DIR
"""

from __future__ import annotations

from pathlib import Path

# The language model's projections; the vision tower ("visual") has its own and stays frozen.
LANGUAGE_LINEAR = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"


def train(
    data: Path,
    model_dir: Path,
    out: Path,
    epochs: float = 10.0,
    learning_rate: float = 1e-5,
    max_steps: int = -1,
    lora_rank: int = 8,
    batch_size: int = 1,
) -> Path:
    import torch
    from datasets import Image, Sequence, load_dataset
    from peft import LoraConfig
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration
    from trl import SFTConfig, SFTTrainer

    from ..agent.prompts import IBIS_V1

    processor = AutoProcessor.from_pretrained(model_dir)
    processor.image_processor.size = {"longest_edge": IBIS_V1.max_pixels, "shortest_edge": IBIS_V1.min_pixels}
    on_gpu = torch.cuda.is_available()
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        model_dir, dtype=torch.bfloat16 if on_gpu else torch.float32
    )
    dataset = load_dataset("json", data_files=str(data / "sft_trl.jsonl"), split="train")
    dataset = dataset.map(lambda row: {"images": [str(data / p) for p in row["images"]]})
    dataset = dataset.cast_column("images", Sequence(Image()))
    config = SFTConfig(
        output_dir=str(out),
        num_train_epochs=epochs,
        max_steps=max_steps,
        learning_rate=learning_rate,
        lr_scheduler_type="cosine",
        per_device_train_batch_size=batch_size,
        bf16=on_gpu,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        max_length=None,
        use_cpu=not on_gpu,
    )
    peft = LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, target_modules=LANGUAGE_LINEAR, task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=processor, peft_config=peft)
    trainer.train()
    trainer.save_model(str(out))
    return out
