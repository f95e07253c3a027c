"""A Qwen2.5-VL model (IBIS or another fine-tune) run in-process with transformers."""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import Any

from PIL import Image

from ..agent.interfaces import PolicyRequest
from ..models.devices import resolve_device


class TransformersQwenPolicy:
    """Greedy decoding of a local Qwen2.5-VL checkpoint folder (``save_pretrained`` layout)."""

    def __init__(self, model_dir: str | Path, device: str = "auto") -> None:
        import torch
        from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

        self.device = resolve_device(device)
        on_gpu = self.device.startswith("cuda")
        dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if on_gpu else torch.float32
        attention = "flash_attention_2" if on_gpu and importlib.util.find_spec("flash_attn") else "sdpa"
        self.model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            str(model_dir), dtype=dtype, attn_implementation=attention
        )
        self.model.to(self.device).eval()
        self.processor = AutoProcessor.from_pretrained(str(model_dir))
        self.description = f"Qwen2.5-VL ({Path(model_dir).name}, {self.device}, {str(dtype).removeprefix('torch.')})"

    def generate(self, request: PolicyRequest, cancel: threading.Event) -> str:
        import torch
        from qwen_vl_utils import process_vision_info

        messages = self._messages(request)
        text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        images, _ = process_vision_info(messages)
        inputs = self.processor(text=[text], images=images, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            output = self.model.generate(
                **inputs,
                max_new_tokens=request.max_new_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                stopping_criteria=[_cancel_criterion(cancel)],
            )
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        return self.processor.batch_decode(new_tokens, skip_special_tokens=True)[0]

    @staticmethod
    def _messages(request: PolicyRequest) -> list[dict[str, Any]]:
        def user(text: str, image: Any) -> dict[str, Any]:
            picture = {
                "type": "image",
                "image": Image.fromarray(image),
                "max_pixels": request.max_pixels,
                "min_pixels": request.min_pixels,
            }
            return {"role": "user", "content": [picture, {"type": "text", "text": text}]}

        messages = [{"role": "system", "content": [{"type": "text", "text": request.system_prompt}]}]
        for past_text, past_image, past_answer in request.history:
            messages.append(user(past_text, past_image))
            messages.append({"role": "assistant", "content": [{"type": "text", "text": past_answer}]})
        messages.append(user(request.user_text, request.image))
        return messages


def _cancel_criterion(cancel: threading.Event) -> Any:
    import torch
    from transformers import StoppingCriteria

    class StopOnCancel(StoppingCriteria):
        """Ends generation at the next token once the session is cancelled."""

        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
            return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device)

    return StopOnCancel()
