"""The backend server as a real uvicorn process on 127.0.0.1, with the tiny models."""

import base64
import json
import re
import socket
import struct
import threading
import time
import zlib

import numpy as np
import pytest
import requests
from conftest import SAMPLE
from fake_openai_server import FakeOpenAIServer
from server_process import ServerProcess

from IBISAgentLib.imaging.images import read_rgb_image
from IBISAgentLib.remote.client import AuthFailed, RemoteBackend, RequestRejected, ServerFailed, SessionExpired
from IBISAgentLib.remote.protocol import MAGIC, UploadedImage, content_hash, encode_image, encode_mask

INSTRUCTION = "segment the vertebral body of patient Zebulon-Quartz"


def clicks(n):
    return [f"<think>{i}</think><action>Positive Point (0.{i + 10:02d}00, 0.5000)</action>" for i in range(n)]


TERMINATE = "<think>done</think><action>Terminate</action><answer>Done.</answer>"


@pytest.fixture(scope="module")
def replay(tmp_path_factory):
    path = tmp_path_factory.mktemp("replay") / "outputs.json"
    path.write_text(json.dumps([*clicks(10), TERMINATE]))
    return path


@pytest.fixture(scope="module")
def server(tiny_models, replay, tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "server.log"
    with ServerProcess("--mllm", f"replay:{replay}", "--sam2", str(tiny_models[1]), "--idle-timeout", "3",
                       "--max-upload-mb", "8", log=log) as process:  # fmt: skip
        yield process


def test_health_is_public_and_says_only_status_and_versions(server):
    health = requests.get(server.url + "/v1/health", timeout=5).json()
    assert set(health) == {"status", "version", "api"} and health["status"] == "ok"
    assert requests.get(server.url + "/docs", timeout=5).ok
    assert "/v1/sessions" in requests.get(server.url + "/openapi.json", timeout=5).json()["paths"]


def test_full_protocol_round_trip(server):
    backend = RemoteBackend(server.url, token=server.token)
    assert backend.server["models"]["tool"].startswith("MedSAM2")
    image = read_rgb_image(SAMPLE)
    steps = []
    session = backend.open_session(image, INSTRUCTION, max_turns=4, on_step=steps.append)
    first = session.step()
    assert first is steps[0] and first.pixel == (13, 64) and first.mask.shape == (128, 128)
    trace = session.run()
    assert trace.stop_reason == "max_turns" and len(trace.steps) == 5
    user = session.add_click(100, 20, positive=False)
    assert user.source == "user" and user.action.kind == "negative"
    assert session.undo().source == "user"
    assert np.array_equal(session.mask, steps[-2].mask)  # steps[-1] is the undone user click
    trace = session.trace()
    assert [s.source for s in trace.undone] == ["user"] and trace.instruction == INSTRUCTION
    session.close()
    with pytest.raises(SessionExpired, match="closed or expired"):
        session.trace()


def test_an_image_crosses_the_wire_once(server):
    backend = RemoteBackend(server.url, token=server.token)
    payload = UploadedImage("rgb", np.random.default_rng(5).integers(0, 255, (64, 80, 3), dtype=np.uint8))
    digest = content_hash(encode_image(payload))
    head = lambda: requests.head(f"{server.url}/v1/images/{digest}", headers=server.headers, timeout=5)  # noqa: E731
    assert head().status_code == 404
    sent = []
    backend.http.hooks["response"].append(
        lambda r, *a, **k: sent.append((r.request.method, len(r.request.body or b"")))
    )
    assert backend.upload(payload) == digest
    assert backend.upload(payload) == digest
    body_size = len(encode_image(payload))
    assert sent == [("HEAD", 0), ("PUT", body_size), ("HEAD", 0)]  # the second time, only the hash travels
    assert head().status_code == 200


def test_click_requests_are_small(server):
    backend = RemoteBackend(server.url, token=server.token)
    session = backend.open_session(read_rgb_image(SAMPLE), "x")
    sizes = []
    backend.http.hooks["response"].append(lambda r, *a, **k: sizes.append(len(r.request.body or b"")))
    session.add_click(64, 64, positive=True)
    assert sizes and max(sizes) <= 2048


def test_authentication_comes_before_the_body(server):
    with pytest.raises(AuthFailed, match="refused the token"):
        RemoteBackend(server.url, token="wrong")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic dGVzdA=="}):
        response = requests.post(server.url + "/v1/sessions", data=b"{}", headers=headers, timeout=5)
        assert response.status_code == 401
    # A client announcing 10 GB without sending them is answered at once, before any body is read.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
        raw.sendall(b"PUT /v1/images/" + b"0" * 64 + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n\r\n")
        assert raw.recv(100).startswith(b"HTTP/1.1 401")


def raw_upload(server, body, digest=None):
    digest = digest or content_hash(body)
    return requests.put(f"{server.url}/v1/images/{digest}", data=body, headers=server.headers, timeout=30)


def header_only(header: dict, data: bytes = b"") -> bytes:
    encoded = json.dumps(header).encode()
    return MAGIC + struct.pack("<I", len(encoded)) + encoded + data


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (b"\x00" * 100, 422, "bad magic"),
        (header_only({"kind": "volume", "dtype": "int16", "shape": [2, 2, 2, 2]}), 422, "3 dimensions"),
        (header_only({"kind": "volume", "dtype": "object", "shape": [2, 2, 2]}), 422, "dtype"),
        (header_only({"kind": "rgb", "dtype": "uint8", "shape": [4, 4, 3]}, b"\x00" * 10), 422, "expected 48 bytes"),
        (MAGIC + struct.pack("<I", 100_000) + b"{}", 422, "header of 100000 bytes"),
        (header_only({"kind": "volume", "dtype": "int16", "shape": [1, 1, 100_000]}), 422, "limit"),
        (encode_image(UploadedImage("volume", np.full((2, 3, 3), np.nan, np.float32))), 422, "NaN"),
        (b"\x00" * (9 << 20), 413, "larger than"),
    ],
)
def test_bad_uploads_are_4xx_with_a_message(server, body, status, reason):
    response = raw_upload(server, body)
    assert response.status_code == status and reason in response.json()["detail"]


def test_bad_session_requests_are_4xx_with_a_message(server):
    backend = RemoteBackend(server.url, token=server.token)
    digest = backend.upload(UploadedImage("rgb", read_rgb_image(SAMPLE)))
    post = lambda body: requests.post(server.url + "/v1/sessions", json=body, headers=server.headers, timeout=10)  # noqa: E731
    assert post({"image": "0" * 64, "instruction": "x"}).status_code == 404
    assert post({"image": digest, "instruction": "x" * 5000}).status_code == 422
    assert post({"image": digest, "instruction": ""}).status_code == 422
    assert "apply to volumes" in post({"image": digest, "instruction": "x", "slice": "axial:1"}).json()["detail"]
    wrong_mask = {"image": digest, "instruction": "x", "initial_mask": encode_mask(np.ones((5, 5), bool))}
    assert "the mask is (5, 5), the image is (128, 128)" in post(wrong_mask).json()["detail"]
    bomb = {
        "shape": [128, 128],
        "bbox": [[0, 1], [0, 8]],
        "bits": base64.b64encode(zlib.compress(b"\0" * 10**6)).decode(),
    }
    assert (
        "do not hold exactly 1 bytes"
        in post({"image": digest, "instruction": "x", "initial_mask": bomb}).json()["detail"]
    )
    session = backend.open_session(read_rgb_image(SAMPLE), "x")
    with pytest.raises(RequestRejected, match="outside"):
        session.add_click(500, 3, positive=True)
    response = requests.post(f"{server.url}/v1/sessions/{session.id}/clicks", json={"x": -1}, headers=server.headers)
    assert response.status_code == 422


def test_a_server_without_a_pacs_says_so(server):
    response = requests.post(server.url + "/v1/images/pacs", json={"series": "1.2.3"}, headers=server.headers)
    assert response.status_code == 404 and "ibisagent serve --pacs URL" in response.json()["detail"]
    unauthenticated = requests.post(server.url + "/v1/images/pacs", json={"series": "1.2.3"}, timeout=10)
    assert unauthenticated.status_code == 401


def test_idle_sessions_expire_and_memory_is_released(server):
    backend = RemoteBackend(server.url, token=server.token)
    session = backend.open_session(read_rgb_image(SAMPLE), "x")
    assert backend.request("GET", "/v1/capabilities").json()["sessions_open"] >= 1
    time.sleep(4.5)  # idle timeout 3 s, reaped within a quarter of it; a loaded machine may take longer
    deadline = time.monotonic() + 15
    while backend.request("GET", "/v1/capabilities").json()["sessions_open"] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert backend.request("GET", "/v1/capabilities").json()["sessions_open"] == 0
    with pytest.raises(SessionExpired):
        session.add_click(1, 1, positive=True)


def test_sixteen_concurrent_clients(server):
    errors, results = [], []

    def client(seed):
        try:
            backend = RemoteBackend(server.url, token=server.token)
            image = np.random.default_rng(seed).integers(0, 255, (96, 96, 3), dtype=np.uint8)
            session = backend.open_session(image, f"client {seed}", max_turns=20)
            trace = session.run()
            results.append((trace.stop_reason, len(trace.steps)))
            session.close()
        except Exception as exc:  # collected and reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert errors == []
    assert results == [("terminate", 11)] * 16


def test_logs_hold_no_instructions(server):
    assert "Zebulon-Quartz" not in server.read_log()  # a name no port, id or timestamp can contain


def test_non_loopback_without_token_is_refused(tiny_models):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "backend_server", "--host", "0.0.0.0", "--sam2", str(tiny_models[1])],
        capture_output=True, text=True, timeout=120, env={"IBISAGENT_TOKEN": "", "PATH": "/usr/bin"},
    )  # fmt: skip
    assert result.returncode == 2 and "without a token" in result.stderr


@pytest.fixture()
def slow_server(tiny_models, tmp_path):
    """A server whose model streams slowly from an OpenAI-compatible endpoint (about 1 s per turn)."""
    with FakeOpenAIServer(chunk_delay=0.1) as model:
        model.replies += [(200, c) for c in clicks(20)]
        with ServerProcess("--mllm", model.url, "--sam2", str(tiny_models[1]), log=tmp_path / "log") as process:
            yield process


def test_client_disconnect_cancels_the_servers_work(slow_server):
    backend = RemoteBackend(slow_server.url, token=slow_server.token)
    session = backend.open_session(read_rgb_image(SAMPLE), "x", max_turns=20)
    response = requests.post(
        f"{slow_server.url}/v1/sessions/{session.id}/run", json={}, headers=slow_server.headers, stream=True
    )
    first = next(response.iter_lines())
    assert json.loads(first)["event"] == "step"
    response.close()
    deadline = time.monotonic() + 30
    while (trace := session.trace()).stop_reason is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert trace.stop_reason == "cancelled" and len(trace.steps) < 5


def test_cancel_keeps_client_and_server_in_step(slow_server):
    backend = RemoteBackend(slow_server.url, token=slow_server.token)
    session = backend.open_session(read_rgb_image(SAMPLE), "x", max_turns=20)
    session.on_step = lambda step: session.cancel() if len(session.steps) == 1 else None
    session.run()
    server_trace = session.trace()
    assert session.stop_reason == "cancelled" == server_trace.stop_reason
    assert len(session.steps) == len(server_trace.steps) < 20
    assert session.undo() is not None and len(session.trace().steps) == len(session.steps)


def test_server_killed_mid_run_is_a_clear_error_and_nothing_partial(slow_server):
    backend = RemoteBackend(slow_server.url, token=slow_server.token)
    session = backend.open_session(read_rgb_image(SAMPLE), "x", max_turns=20)
    seen = []

    def kill_after_first(step):
        seen.append(step)
        if len(seen) == 1:
            threading.Thread(target=slow_server.kill).start()

    session.on_step = kill_after_first
    with pytest.raises(ServerFailed, match="unfinished"):
        session.run()
    assert len(session.steps) == len(seen) and np.array_equal(session.mask, seen[-1].mask)


def _with_real_ids(schema: dict, sessions: list[str], images: list[str]) -> dict:
    """The server's own OpenAPI schema with its id parameters drawn from real sessions and images, so that
    every route is reached behind its 404 for an unknown id (random ids fuzzed only that 404)."""
    for operations in schema["paths"].values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter["name"] == "session_id":
                    parameter["schema"] = {"type": "string", "enum": sessions}
                elif parameter["name"] == "digest":
                    parameter["schema"] = {"type": "string", "enum": images}
    return schema


def test_schemathesis_finds_no_server_error(tiny_models, replay, tmp_path):
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    schemathesis = shutil.which("schemathesis") or str(Path(sys.executable).with_name("schemathesis"))
    with ServerProcess("--mllm", f"replay:{replay}", "--sam2", str(tiny_models[1]), log=tmp_path / "log") as process:
        images, sessions = [], []
        for kind, array, slice_spec in (("rgb", read_rgb_image(SAMPLE), None),
                                        ("volume", np.zeros((5, 24, 24), np.int16), "axial:2")):  # fmt: skip
            body = encode_image(UploadedImage(kind, array))
            images.append(content_hash(body))
            requests.put(f"{process.url}/v1/images/{images[-1]}", data=body, headers=process.headers, timeout=30)
            for _ in range(3):  # a few of each, as fuzzed requests close and cancel them
                opened = requests.post(f"{process.url}/v1/sessions", headers=process.headers, timeout=30,
                                       json={"image": images[-1], "instruction": "x", "slice": slice_spec})  # fmt: skip
                sessions.append(opened.json()["session"])
        schema = _with_real_ids(requests.get(process.url + "/openapi.json", timeout=30).json(), sessions, images)
        (tmp_path / "openapi.json").write_text(json.dumps(schema))
        result = subprocess.run(
            [schemathesis, "run", str(tmp_path / "openapi.json"), "--url", process.url, "--checks",
             "not_a_server_error", "--max-examples", "5", "--seed", "1", "-H",
             f"Authorization: Bearer {process.token}"],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        log = process.read_log()
    assert result.returncode == 0, result.stdout[-3000:]
    assert " passed" in result.stdout
    known = "|".join(sessions)
    for method, route in (("POST", "run"), ("POST", "clicks"), ("POST", "undo"), ("POST", "propagate"),
                          ("GET", "trace")):  # fmt: skip
        assert re.search(rf'"{method} /v1/sessions/({known})/{route} HTTP/1.1" 200', log), f"{route} never reached"


def test_a_full_queue_answers_503_with_retry_after(tiny_models, tmp_path):
    with FakeOpenAIServer(chunk_delay=0.6) as model:  # runs that last seconds: still busy on a loaded machine
        model.replies += [(200, c) for c in clicks(30)]
        with ServerProcess("--mllm", model.url, "--sam2", str(tiny_models[1]), "--max-queue", "1") as process:
            backend = RemoteBackend(process.url, token=process.token)
            image = read_rgb_image(SAMPLE)
            sessions = [backend.open_session(image, "x", max_turns=3) for _ in range(3)]
            statuses = []

            def start(session):
                response = requests.post(
                    f"{process.url}/v1/sessions/{session.id}/run", json={}, headers=process.headers, stream=True
                )
                statuses.append((response.status_code, response.headers.get("Retry-After")))
                response.close()

            threads = [threading.Thread(target=start, args=(s,)) for s in sessions]
            for thread in threads:
                thread.start()
                time.sleep(0.3)
            for thread in threads:
                thread.join(timeout=60)
    assert (503, "2") in statuses and statuses.count((200, None)) == 2
