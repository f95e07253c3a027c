"""A model served behind an OpenAI-compatible chat-completions endpoint (vLLM, SGLang, …)."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from typing import Any

import numpy as np
import requests
from PIL import Image

from ..agent.interfaces import PolicyRequest
from .errors import PolicyError

# Qwen2.5-VL works on 28 x 28 pixel blocks (14 px patches merged 2 x 2).
_QWEN_PIXEL_FACTOR = 28


class OpenAIChatPolicy:
    """Greedy chat completions with the turn's image as a base64 PNG; streams so cancel is prompt."""

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        api_key: str | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 300.0,
        retries: int = 2,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = (connect_timeout, read_timeout)
        self.retries = retries
        self.http = requests.Session()
        if api_key:
            self.http.headers["Authorization"] = f"Bearer {api_key}"
        self.model = model or self._only_served_model()
        self.description = f"{self.model} at {self.base_url}"

    def generate(self, request: PolicyRequest, cancel: threading.Event) -> str:
        return self.chat(self._messages(request), request.max_new_tokens, cancel)

    def chat(self, messages: list[dict[str, Any]], max_tokens: int, cancel: threading.Event | None = None) -> str:
        """Greedy completion of any chat messages (OpenAI format), streamed so ``cancel`` is prompt."""
        cancel = cancel or threading.Event()
        body = {"model": self.model, "messages": messages, "max_tokens": max_tokens, "temperature": 0.0, "stream": True}
        response = self._send("POST", "/chat/completions", json=body, stream=True)
        parts: list[str] = []
        with response:
            for line in response.iter_lines(decode_unicode=True):
                if cancel.is_set():
                    break
                if not line or not line.startswith("data:"):
                    continue
                payload = line[len("data:") :].strip()
                if payload == "[DONE]":
                    break
                try:
                    delta = json.loads(payload)["choices"][0].get("delta", {})
                except (json.JSONDecodeError, KeyError, IndexError) as exc:
                    raise PolicyError(f"{self.base_url} sent a malformed stream chunk: {payload[:200]!r}") from exc
                parts.append(delta.get("content") or "")
        return "".join(parts)

    def _only_served_model(self) -> str:
        listing = self._send("GET", "/models").json()
        names = [entry.get("id") for entry in listing.get("data", []) if entry.get("id")]
        if len(names) != 1:
            raise PolicyError(
                f"{self.base_url} serves {len(names)} models ({', '.join(names) or 'none'}); "
                "name one with --mllm-model or IBISAGENT_MLLM_MODEL"
            )
        return names[0]

    def _send(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        url = self.base_url + path
        for attempt in range(self.retries + 1):
            retry_reason = None
            try:
                response = self.http.request(method, url, timeout=self.timeout, **kwargs)
            except requests.exceptions.SSLError as exc:
                raise PolicyError(f"TLS verification failed for {url}: {exc}") from exc
            except (requests.ConnectionError, requests.Timeout) as exc:
                retry_reason = f"cannot reach {url}: {exc.__class__.__name__}"
            else:
                if response.status_code == 429 or response.status_code >= 500:
                    retry_reason = f"{url} answered HTTP {response.status_code}: {_detail(response)}"
                elif response.status_code >= 400:
                    raise PolicyError(f"{url} refused the request, HTTP {response.status_code}: {_detail(response)}")
                else:
                    return response
            if attempt == self.retries:
                raise PolicyError(f"{retry_reason} (after {self.retries + 1} attempts)")
            time.sleep(min(2.0**attempt, 8.0))
        raise AssertionError("unreachable")

    @staticmethod
    def _messages(request: PolicyRequest) -> list[dict[str, Any]]:
        def user(text: str, image: np.ndarray) -> dict[str, Any]:
            picture = image_part(image, request.max_pixels, request.min_pixels)
            return {"role": "user", "content": [picture, {"type": "text", "text": text}]}

        messages: list[dict[str, Any]] = [{"role": "system", "content": request.system_prompt}]
        for past_text, past_image, past_answer in request.history:
            messages += [user(past_text, past_image), {"role": "assistant", "content": past_answer}]
        messages.append(user(request.user_text, request.image))
        return messages


def image_part(image: np.ndarray, max_pixels: int, min_pixels: int) -> dict[str, Any]:
    """An OpenAI ``image_url`` content part holding ``image`` as a base64 PNG."""
    url = "data:image/png;base64," + _png_base64(image, max_pixels, min_pixels)
    return {"type": "image_url", "image_url": {"url": url}}


def _png_base64(image: np.ndarray, max_pixels: int, min_pixels: int) -> str:
    """The image resized as Qwen2.5-VL's own preprocessing would, so the server sees the training size."""
    from qwen_vl_utils import smart_resize

    height, width = image.shape[:2]
    new_h, new_w = smart_resize(height, width, factor=_QWEN_PIXEL_FACTOR, min_pixels=min_pixels, max_pixels=max_pixels)
    picture = Image.fromarray(image)
    if (new_h, new_w) != (height, width):
        picture = picture.resize((new_w, new_h), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _detail(response: requests.Response) -> str:
    try:
        data = response.json()
        message = data.get("error", data) if isinstance(data, dict) else data
        if isinstance(message, dict):
            message = message.get("message", message)
        return str(message)[:300]
    except ValueError:
        return response.text[:300] or response.reason
