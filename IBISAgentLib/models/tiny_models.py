"""Tiny random-weight models that run every real loading path offline.

``DIR/mllm/`` is a Qwen2.5-VL with a few layers, a byte-level BPE tokenizer trained here on the agent's
own vocabulary, the standard Qwen2-VL chat template and a ``Qwen2_5_VLProcessor``, written with
``save_pretrained``. ``DIR/medsam2.pt`` is MedSAM2 at its real size (SAM2.1 hiera-tiny, 512 px) with
random weights, in the ``{"model": state_dict}`` layout of ``MedSAM2_latest.pt``. Their outputs are
meaningless; their code paths, shapes and compute cost are the real ones.
"""

from __future__ import annotations

from pathlib import Path

from ..agent.prompts import IBIS_V1
from ..tools.variants import MEDSAM2, SAM2Variant

# The special tokens of Qwen2.5-VL's tokenizer, in their order.
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# The chat template Qwen2-VL and Qwen2.5-VL checkpoints ship (tokenizer_config.json of Qwen2-VL-7B-Instruct).
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = (
    IBIS_V1.system_prompt,
    IBIS_V1.refinement_template,
    "<think>The liver occupies the upper right abdomen; the mask misses its lower edge.</think>"
    "<action>Positive Point (0.4321, 0.6789)</action>",
    "<think>The mask leaks into the kidney.</think><action>Negative Point (0.1234, 0.5678)</action>",
    "<think>The mask follows the tumor boundary.</think><action>Terminate</action><answer>Done.</answer>",
    "segment the liver tumor, kidney, spleen, pancreas, lung nodule, polyp, cell nucleus in this CT MR image",
)


DEMO_HOME = Path.home() / ".cache" / "ibisagent"  # ``ibisagent demo``'s outputs and the demo models


def demo_models(folder: Path = DEMO_HOME / "tiny-models") -> tuple[Path, Path]:
    """The tiny models that stand in for missing weights in ``ibisagent demo`` and the web app's "Use demo
    models", built once into ``folder``."""
    mllm, medsam2 = folder / "mllm", folder / "medsam2.pt"
    if not ((mllm / "config.json").is_file() and medsam2.is_file()):
        build_tiny_models(folder)
    return mllm, medsam2


def build_tiny_models(directory: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """Write ``DIR/mllm`` and ``DIR/medsam2.pt``; returns their paths."""
    import torch

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    mllm = directory / "mllm"
    _build_tiny_qwen(mllm)
    medsam2 = directory / "medsam2.pt"
    _build_random_medsam2(medsam2)
    return mllm, medsam2


def _build_tiny_qwen(folder: Path) -> None:
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    tokenizer = _train_tokenizer()
    token = tokenizer.convert_tokens_to_ids
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 8192,
            # mrope_section splits the rotary half-dimension (64 / 4 / 2 = 8) over time, height, width.
            "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1_000_000.0},
            "bos_token_id": token("<|endoftext|>"),
            "eos_token_id": token("<|im_end|>"),
            "pad_token_id": token("<|endoftext|>"),
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": 64,
            "fullatt_block_indexes": [1],
            "window_size": 112,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        image_token_id=token("<|image_pad|>"),
        video_token_id=token("<|video_pad|>"),
        vision_start_token_id=token("<|vision_start|>"),
        vision_end_token_id=token("<|vision_end|>"),
    )
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = token("<|im_end|>")
    model.generation_config.pad_token_id = token("<|endoftext|>")
    model.save_pretrained(folder)
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )
    processor.save_pretrained(folder)


def _train_tokenizer():  # -> transformers.Qwen2Tokenizer
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator(_CORPUS, trainer)
    trained = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    tokenizer = Qwen2Tokenizer(
        vocab=trained["vocab"], merges=merges, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIAL_TOKENS[1:])})
    tokenizer.add_tokens([QWEN_SPECIAL_TOKENS[0]], special_tokens=True)
    return tokenizer


def _build_random_medsam2(path: Path) -> None:
    build_random_segmenter(path, MEDSAM2)


def build_random_segmenter(path: str | Path, variant: SAM2Variant) -> Path:
    """A SAM 2 family checkpoint with random weights, in the released files' layout ({"model": state_dict})."""
    import torch

    from ..tools.sam2_model import build_model

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": build_model(variant, None, "cpu", stock=True).state_dict()}, path)
    return path
