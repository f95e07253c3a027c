"""The OpenAI-compatible HTTP policy against a real HTTP server on 127.0.0.1."""

import base64
import io
import socket
import threading

import numpy as np
import pytest
from fake_openai_server import FakeOpenAIServer
from PIL import Image

from IBISAgentLib.agent.interfaces import PolicyRequest
from IBISAgentLib.agent.prompts import IBIS_V1
from IBISAgentLib.policies import PolicyError
from IBISAgentLib.policies.openai_http import OpenAIChatPolicy


def request(image):
    return PolicyRequest(
        IBIS_V1.system_prompt, "<image>segment the liver", image, 512, IBIS_V1.max_pixels, IBIS_V1.min_pixels
    )


def test_sends_the_turn_and_assembles_the_streamed_answer():
    answer = "<think>there</think><action>Positive Point (0.5000, 0.2500)</action>"
    image = np.random.default_rng(0).integers(0, 255, (1000, 800, 3), dtype=np.uint8)
    with FakeOpenAIServer() as server:
        server.replies.append((200, answer))
        policy = OpenAIChatPolicy(server.url, api_key="secret")
        assert policy.generate(request(image), threading.Event()) == answer
    body = server.requests[0]
    assert body["model"] == "ibis-7b" and body["temperature"] == 0.0 and body["max_tokens"] == 512
    system, user = body["messages"]
    assert system == {"role": "system", "content": IBIS_V1.system_prompt}
    assert [part["type"] for part in user["content"]] == ["image_url", "text"]
    assert user["content"][1]["text"] == "<image>segment the liver"
    url = user["content"][0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert sent.width * sent.height <= IBIS_V1.max_pixels and sent.width % 28 == 0 and sent.height % 28 == 0
    assert server.headers[0]["Authorization"] == "Bearer secret"


def test_client_errors_are_reported_not_retried():
    with FakeOpenAIServer() as server:
        server.replies.append((400, "max_tokens is too large"))
        policy = OpenAIChatPolicy(server.url, model="ibis-7b", retries=2)
        with pytest.raises(PolicyError, match=r"HTTP 400: max_tokens is too large"):
            policy.generate(request(np.zeros((64, 64, 3), np.uint8)), threading.Event())
        assert len(server.requests) == 1


def test_server_errors_are_retried_then_reported():
    with FakeOpenAIServer() as server:
        server.replies += [(503, "loading"), (500, "oops")]
        policy = OpenAIChatPolicy(server.url, model="ibis-7b", retries=1)
        with pytest.raises(PolicyError, match=r"HTTP 500: oops \(after 2 attempts\)"):
            policy.generate(request(np.zeros((64, 64, 3), np.uint8)), threading.Event())
        server.replies.append((503, "loading"))
        policy = OpenAIChatPolicy(server.url, model="ibis-7b", retries=1)
        assert (
            policy.generate(request(np.zeros((64, 64, 3), np.uint8)), threading.Event()) == "<action>Terminate</action>"
        )


def test_cannot_connect_is_a_clear_error():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(PolicyError, match=rf"cannot reach http://127.0.0.1:{port}/v1/models"):
        OpenAIChatPolicy(f"http://127.0.0.1:{port}/v1", retries=0)


def test_model_name_must_be_given_when_several_are_served():
    with FakeOpenAIServer(models=["a", "b"]) as server, pytest.raises(PolicyError, match="serves 2 models"):
        OpenAIChatPolicy(server.url)


def test_cancel_stops_reading_the_stream():
    with FakeOpenAIServer() as server:
        server.replies.append((200, "x" * 500))
        cancel = threading.Event()
        cancel.set()
        policy = OpenAIChatPolicy(server.url)
        assert policy.generate(request(np.zeros((64, 64, 3), np.uint8)), cancel) == ""
