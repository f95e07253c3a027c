"""The tiny Qwen2.5-VL goes through the real save/load code and the real generation path."""

import threading

import numpy as np
import pytest

from IBISAgentLib.agent.interfaces import PolicyRequest
from IBISAgentLib.agent.prompts import IBIS_V1


@pytest.fixture(scope="module")
def policy(tiny_models, device):
    from IBISAgentLib.policies.transformers_qwen import TransformersQwenPolicy

    return TransformersQwenPolicy(tiny_models[0], device=device)


def request(image, text="<image>segment the liver", max_new_tokens=8):
    return PolicyRequest(
        system_prompt=IBIS_V1.system_prompt,
        user_text=text,
        image=image,
        max_new_tokens=max_new_tokens,
        max_pixels=IBIS_V1.max_pixels,
        min_pixels=IBIS_V1.min_pixels,
    )


def test_tiny_model_folder_has_the_released_layout(tiny_models):
    from transformers import AutoConfig, AutoProcessor

    folder = tiny_models[0]
    config = AutoConfig.from_pretrained(folder)
    processor = AutoProcessor.from_pretrained(folder)
    assert config.model_type == "qwen2_5_vl"
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    tokenizer = processor.tokenizer
    for token in ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|image_pad|>", "<|vision_end|>"):
        assert tokenizer.convert_tokens_to_ids(token) is not None
    assert tokenizer.decode(tokenizer("<think>a</think><action>Terminate</action>")["input_ids"]) == (
        "<think>a</think><action>Terminate</action>"
    )


def test_prompt_is_system_then_image_then_text(policy):
    messages = policy._messages(request(np.zeros((64, 64, 3), np.uint8)))
    text = policy.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        f"<|im_start|>system\n{IBIS_V1.system_prompt}<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|><image>segment the liver<|im_end|>\n<|im_start|>assistant\n"
    )


def test_images_are_capped_at_the_training_size(policy):
    from qwen_vl_utils import process_vision_info

    big = np.random.default_rng(0).integers(0, 255, (1024, 768, 3), dtype=np.uint8)
    images, _ = process_vision_info(policy._messages(request(big)))
    width, height = images[0].size
    assert width * height <= IBIS_V1.max_pixels
    assert abs(width / height - 768 / 1024) < 0.06


def test_generate_is_greedy_and_deterministic(policy):
    image = np.random.default_rng(1).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    first = policy.generate(request(image), threading.Event())
    second = policy.generate(request(image), threading.Event())
    assert isinstance(first, str) and first == second


def test_generate_returns_at_once_when_cancelled(policy):
    cancel = threading.Event()
    cancel.set()
    image = np.zeros((64, 64, 3), np.uint8)
    long = policy.generate(request(image, max_new_tokens=64), threading.Event())
    short = policy.generate(request(image, max_new_tokens=64), cancel)
    assert len(policy.processor.tokenizer(short)["input_ids"]) <= 1 < len(policy.processor.tokenizer(long)["input_ids"])
