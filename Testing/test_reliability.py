"""What no failure may do: freeze the server, answer 5xx to bad input, leak a secret into a log, or lose
the user's work. Each class of failure the outside audit found, as the user meets it (real CLI, real server)."""

import json
import re
import subprocess
import sys
import threading
import time

import jsonschema
import numpy as np
import pytest
import requests
from conftest import SAMPLE
from fake_openai_server import FakeOpenAIServer
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from PIL import Image
from server_process import ServerProcess
from test_cli import SCHEMA, ibisagent, replay_file

from IBISAgentLib.agent import jsontext
from IBISAgentLib.agent.actions import Action
from IBISAgentLib.agent.trace import ImageInfo, Step, Trace
from IBISAgentLib.imaging.images import read_rgb_image
from IBISAgentLib.remote.client import RemoteBackend, token_exposed
from IBISAgentLib.remote.protocol import MAGIC, UploadedImage, content_hash, encode_image

CLICK = "<think>{}</think><action>Positive Point (0.4500, 0.2300)</action>"
TERMINATE = "<think>done</think><action>Terminate</action><answer>ok</answer>"

# Any code point, lone surrogates included (a model's "\ud800" escape, a non-UTF-8 command line).
any_text = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF, categories=None), max_size=40)


def _no_pairs(text: str) -> bool:
    """JSON cannot tell a surrogate pair written as two code points from the character it encodes."""
    return re.search("[\ud800-\udbff][\udc00-\udfff]", text) is None


# -- text from outside survives JSON ---------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(any_text, any_text, any_text)
def test_any_text_round_trips_through_trace_save_and_load(tmp_path_factory, instruction, think, raw):
    assume(instruction.strip() and all(_no_pairs(t) for t in (instruction, think, raw)))
    step = Step(1, "agent", Action("terminate"), None, 0.5, 3, think=think, answer=raw, raw=raw)
    trace = Trace(instruction, ImageInfo(4, 4, think), {"policy": raw}, [step], raw, "terminate")
    path = tmp_path_factory.mktemp("trace") / "trace.json"
    trace.save(path)
    loaded = Trace.load(path)
    assert loaded.to_dict() == trace.to_dict()
    path.read_bytes().decode("utf-8")  # valid UTF-8 for every other JSON reader


@given(any_text)
def test_json_text_is_valid_utf8_and_exact(text):
    assume(_no_pairs(text))
    assert json.loads(jsontext.dump_bytes({"t": text}).decode("utf-8")) == {"t": text}


def test_a_model_writing_a_lone_surrogate_still_leaves_mask_and_trace(tmp_path, tiny_models):
    outputs = ["<think>bad escape \ud800 here</think><action>Positive Point (0.4500, 0.2300)</action>", TERMINATE]
    mllm = replay_file(tmp_path, outputs)
    for flags in ([], ["--jsonl"]):
        result = ibisagent("segment", SAMPLE, "--prompt", "x", "--mllm", mllm, "--sam2", tiny_models[1], *flags,
                           cwd=tmp_path)  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr and "--click" not in result.stderr
        trace = Trace.load(tmp_path / "ct_thoracic_vertebra_trace.json")
        assert trace.steps[0].think == "bad escape \ud800 here" and trace.stop_reason == "terminate"
        assert (tmp_path / "ct_thoracic_vertebra_mask.png").is_file()


def test_an_instruction_that_is_not_utf8_is_kept_byte_for_byte(tmp_path, tiny_models):
    mllm = replay_file(tmp_path, [TERMINATE])
    command = [sys.executable, "-m", "IBISAgentLib", "segment", str(SAMPLE), "--prompt", b"segment the \xff liver",
               "--mllm", mllm, "--sam2", str(tiny_models[1])]  # fmt: skip
    result = subprocess.run(command, capture_output=True, cwd=tmp_path, timeout=300, env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    saved = json.loads((tmp_path / "ct_thoracic_vertebra_trace.json").read_bytes().decode("utf-8"))
    assert saved["instruction"].encode("utf-8", "surrogateescape") == b"segment the \xff liver"


# -- the CLI refuses bad input before the run, with exit code 2 ---------------------------------------------------


def _bomb_png(path):
    """A valid PNG header declaring 20000 x 20000 pixels (PIL refuses it as a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))


def _other_architecture(tmp_path, tiny_models):
    import torch

    state = torch.load(tiny_models[1], weights_only=True)
    key = next(k for k, v in state["model"].items() if v.ndim == 2)
    state["model"][key] = torch.zeros(3, 5)
    path = tmp_path / "other.pt"
    torch.save(state, path)
    return path


@pytest.mark.parametrize(
    ("make_args", "reason"),
    [
        (lambda t, m: [t / "bomb.png", "--prompt", "x"], "declares more pixels"),
        (lambda t, m: [t / "nan.tiff", "--prompt", "x"], "NaN"),
        (
            lambda t, m: [SAMPLE, "--prompt", "x", "--mllm", m[0], "--sam2", _other_architecture(t, m)],
            "fit no SAM 2 family variant",
        ),
        (lambda t, m: [SAMPLE, "--prompt", "x", "--out", t], "is a folder"),
        (lambda t, m: [SAMPLE, "--prompt", "x", "--trace", t / "bomb.png" / "trace.json"], "is a file, not a folder"),
        (lambda t, m: [SAMPLE, "--prompt", "x", "--click", "128,0"], "outside the 128x128 image"),
    ],
)
def test_bad_input_is_refused_before_the_run(tmp_path, tiny_models, make_args, reason):
    _bomb_png(tmp_path / "bomb.png")
    Image.fromarray(np.full((8, 8), np.nan, np.float32)).save(tmp_path / "nan.tiff")
    result = ibisagent("segment", *make_args(tmp_path, tiny_models), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert reason in result.stderr and "Traceback" not in result.stderr
    assert "step 1" not in result.stdout


def test_an_expected_policy_failure_is_one_line_not_a_traceback(tmp_path, tiny_models):
    mllm = replay_file(tmp_path, [CLICK.format("one")])  # the replay runs out on turn 2
    result = ibisagent("segment", SAMPLE, "--prompt", "x", "--mllm", mllm, "--sam2", tiny_models[1], cwd=tmp_path)
    assert result.returncode == 1
    assert "the replay has no output left for turn 2" in result.stderr and "Traceback" not in result.stderr
    trace = Trace.load(tmp_path / "ct_thoracic_vertebra_trace.json")
    assert trace.stop_reason == "error" and len(trace.steps) == 2
    assert (tmp_path / "ct_thoracic_vertebra_mask.png").is_file()


# -- the server: 4xx for any bad input, nothing secret or private in its log ---------------------------------------


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("reliability")
    replay = folder / "replay.json"
    replay.write_text(json.dumps(["<think>x \ud800 y</think><action>Terminate</action><answer>\udcff</answer>"] * 50))
    arguments = ["--mllm", f"replay:{replay}", "--sam2", str(tiny_models[1]), "--idle-timeout", "2",
                 "--body-timeout", "2", "--max-sessions", "40"]  # fmt: skip
    with ServerProcess(*arguments, log=folder / "server.log") as process:
        yield process


def _post(server, path, raw: str):
    headers = {**server.headers, "Content-Type": "application/json"}
    return requests.post(server.url + path, data=raw.encode("utf-8", "surrogatepass"), headers=headers, timeout=30)


def _upload(server, image: np.ndarray) -> str:
    body = encode_image(UploadedImage("rgb", image))
    digest = content_hash(body)
    assert requests.put(f"{server.url}/v1/images/{digest}", data=body, headers=server.headers, timeout=30).ok
    return digest


def test_authenticated_bad_input_is_4xx_never_5xx(server):
    digest = _upload(server, np.zeros((32, 32, 3), np.uint8))
    session = _post(server, "/v1/sessions", json.dumps({"image": digest, "instruction": "x"})).json()["session"]
    header = b"[" * 10_000
    nested = MAGIC + len(header).to_bytes(4, "little") + header
    cases = [
        _post(server, "/v1/sessions", '{"image": "' + digest + '", "instruction": "seg \\ud800 Zebulon-Quartz"}'),
        _post(server, f"/v1/sessions/{session}/clicks", '{"x": 1e400, "y": 1, "positive": true}'),
        _post(server, f"/v1/sessions/{session}/clicks", '{"x": 1, "y": 1, "positive": true, "\\udc80": 1}'),
        _post(server, "/v1/sessions", "[" * 100_000),
        requests.put(f"{server.url}/v1/images/{content_hash(nested)}", data=nested, headers=server.headers, timeout=30),
    ]
    assert [r.status_code // 100 for r in cases] == [4] * len(cases), [r.text for r in cases]
    assert all(r.json()["detail"] for r in cases)
    assert "Zebulon-Quartz" not in server.read_log()


def _raw_upload(header: dict | str, data: bytes = b"") -> bytes:
    text = header if isinstance(header, str) else json.dumps(header)
    encoded = text.encode()
    return MAGIC + len(encoded).to_bytes(4, "little") + encoded + data


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        # A spacing too large for a float (OverflowError before), a 5000-digit shape (int() refuses it in json.loads).
        ('{"kind": "volume", "dtype": "uint8", "shape": [1, 1, 1], "spacing": [' + "1" * 400 + ', 1, 1], '
         '"origin": [0, 0, 0], "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1]}', "spacing must be"),
        ('{"kind": "volume", "dtype": "uint8", "shape": [' + "9" * 5000 + ', 1, 1]}', "header is not JSON"),
    ],
)  # fmt: skip
def test_numbers_beyond_a_float_or_an_int_are_422(server, header, reason):
    body = _raw_upload(header, b"\0")
    response = requests.put(f"{server.url}/v1/images/{content_hash(body)}", data=body, headers=server.headers,
                            timeout=30)  # fmt: skip
    assert response.status_code == 422 and reason in response.json()["detail"], response.text


def _open_socket_upload(server, declared: int, sent: bytes):
    import socket

    connection = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    head = (f"PUT /v1/images/{'0' * 64} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.token}\r\n"
            f"Content-Length: {declared}\r\n\r\n").encode()  # fmt: skip
    connection.sendall(head + sent)
    return connection


def _response(connection) -> str:
    """One HTTP response from a raw socket: its head, then as many body bytes as its Content-Length says (the
    server may send them in separate packets)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += connection.recv(4096) or b"\r\n\r\n"
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"content-length: (\d+)", head, re.IGNORECASE).group(1))
    while len(body) < length and (chunk := connection.recv(4096)):
        body += chunk
    return (head + b"\r\n\r\n" + body).decode(errors="replace")


def _rss(pid: int) -> int:
    import psutil

    return psutil.Process(pid).memory_info().rss


def test_a_declared_length_reserves_no_memory_and_silence_ends_the_upload(server):
    """Three uploads declaring 1000 MiB and sending 8 bytes took the server from 1.2 to 4.2 GB and stalled it."""
    before = _rss(server.process.pid)
    connections = [_open_socket_upload(server, 1000 << 20, b"IBISIMG1") for _ in range(3)]
    time.sleep(0.5)
    grown = _rss(server.process.pid) - before
    assert requests.get(server.url + "/v1/health", timeout=5).ok  # the event loop is free
    assert grown < 50 << 20, f"the server grew by {grown >> 20} MiB"
    answers = []
    for connection in connections:  # --body-timeout 2: each is answered 408 and closed
        answers.append(_response(connection))
        connection.close()
    assert all(a.startswith("HTTP/1.1 408") and "no upload bytes for 2 s" in a for a in answers), answers


def test_a_client_gone_mid_upload_is_not_logged_as_an_error(server):
    connection = _open_socket_upload(server, 1 << 20, b"IBISIMG1" + b"\0" * 1000)
    time.sleep(0.3)
    connection.close()
    time.sleep(0.5)
    log = server.read_log()
    assert "ClientDisconnect" not in log and "Traceback" not in log and " ERROR " not in log


def _volume_session(server) -> str:
    body = encode_image(UploadedImage("volume", np.zeros((6, 16, 16), np.int16)))
    digest = content_hash(body)
    assert requests.put(f"{server.url}/v1/images/{digest}", data=body, headers=server.headers, timeout=30).ok
    opened = _post(server, "/v1/sessions", json.dumps({"image": digest, "instruction": "x", "slice": "axial:2"}))
    return opened.json()["session"]


@pytest.mark.parametrize(
    ("request_body", "reason"),
    [
        ({"first": 4, "last": 1}, "must lie in 0:5"),
        ({"first": 0, "last": 9}, "must lie in 0:5"),
        ({"first": 3}, "contain the key slice 2"),
        ({"last": 10**30}, "less than or equal"),
    ],
)
def test_a_bad_propagation_range_is_422_before_anything_streams(server, request_body, reason):
    session = _volume_session(server)
    response = requests.post(f"{server.url}/v1/sessions/{session}/propagate", json=request_body,
                             headers=server.headers, timeout=30)  # fmt: skip
    assert response.status_code == 422 and reason in response.text, response.text
    assert _post(server, f"/v1/sessions/{session}/undo", "{}").status_code == 200  # released, not left busy
    assert "Traceback" not in server.read_log()


def test_propagating_a_2d_session_is_422(server):
    digest = _upload(server, np.zeros((16, 16, 3), np.uint8))
    session = _post(server, "/v1/sessions", json.dumps({"image": digest, "instruction": "x"})).json()["session"]
    response = requests.post(f"{server.url}/v1/sessions/{session}/propagate", json={}, headers=server.headers,
                             timeout=30)  # fmt: skip
    assert response.status_code == 422 and "2D image" in response.text


def test_the_click_tool_keeps_one_embedding_per_session_allowed(server):
    capabilities = requests.get(f"{server.url}/v1/capabilities", headers=server.headers, timeout=30).json()
    assert capabilities["limits"]["max_sessions"] == 40
    assert capabilities["slice_embeddings_kept"] == 40


def test_model_text_with_lone_surrogates_crosses_the_server_intact(server):
    backend = RemoteBackend(server.url, token=server.token)
    instruction = "segment the 肝臓 \u200f tumour 🫁 \x00 end"
    session = backend.open_session(read_rgb_image(SAMPLE), instruction)
    trace = session.run()
    assert trace.instruction == instruction
    assert trace.steps[0].think == "x \ud800 y" and trace.answer == "\udcff"
    response = requests.get(f"{server.url}/v1/sessions/{session.id}/trace", headers=server.headers, timeout=30)
    assert response.status_code == 200
    response.content.decode("utf-8")


def test_uploaded_images_expire_with_their_sessions(server):
    digest = _upload(server, np.random.default_rng(7).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    head = lambda: requests.head(f"{server.url}/v1/images/{digest}", headers=server.headers, timeout=30).status_code  # noqa: E731
    opened = _post(server, "/v1/sessions", json.dumps({"image": digest, "instruction": "x"})).json()["session"]
    time.sleep(1.2)
    requests.post(f"{server.url}/v1/sessions/{opened}/undo", headers=server.headers, timeout=30)  # keeps it alive
    time.sleep(1.2)
    assert head() == 200  # its session still works on it
    time.sleep(4.5)  # the session expires 2 s after its last use, then its image is dropped
    assert head() == 404


def test_uploads_need_a_length_that_holds(server):
    body = encode_image(UploadedImage("rgb", np.zeros((4, 4, 3), np.uint8)))
    url = f"{server.url}/v1/images/{content_hash(body)}"
    chunked = requests.put(url, data=iter([body]), headers=server.headers, timeout=30)
    assert chunked.status_code == 411


def test_a_token_in_a_query_string_never_reaches_the_log(server):
    response = requests.get(f"{server.url}/v1/capabilities?token=Sesame-Tulip-42", timeout=30)
    assert response.status_code == 401
    requests.get(f"{server.url}/v1/capabilities?access_token=Sesame-Tulip-42", headers=server.headers, timeout=30)
    time.sleep(0.3)
    log = server.read_log()
    assert "GET /v1/capabilities?(query removed)" in log and "Sesame-Tulip-42" not in log


def test_refusals_and_disconnects_are_not_logged_as_errors(server):
    backend = RemoteBackend(server.url, token=server.token)
    session = backend.open_session(read_rgb_image(SAMPLE), "x")
    for _ in range(3):
        assert requests.post(f"{server.url}/v1/sessions/{session.id}/clicks", json={"x": 999, "y": 1, "positive": True},
                             headers=server.headers, timeout=30).status_code == 422  # fmt: skip
    response = requests.post(f"{server.url}/v1/sessions/{session.id}/run", json={}, headers=server.headers,
                             stream=True, timeout=30)  # fmt: skip
    response.close()
    time.sleep(0.5)
    log = server.read_log()
    assert "Traceback" not in log and " ERROR " not in log


@given(st.sampled_from(["http", "https"]), st.sampled_from(["127.0.0.1", "localhost", "[::1]", "127.9.9.9",
       "ibis.hospital.example", "10.0.0.5", "[2001:db8::1]"]), st.integers(1, 65535))  # fmt: skip
def test_a_token_is_exposed_only_over_plain_http_to_another_host(scheme, host, port):
    loopback = host in ("127.0.0.1", "localhost", "[::1]", "127.9.9.9")
    assert token_exposed(f"{scheme}://{host}:{port}") == (scheme == "http" and not loopback)


# -- a remote run that fails still writes mask and trace, as README promises ----------------------------------------


@pytest.fixture()
def slow_model():
    with FakeOpenAIServer(chunk_delay=0.05) as model:
        model.replies += [(200, f"<think>{i}</think><action>Positive Point (0.{10 + i:02d}00, 0.5000)</action>")
                          for i in range(40)]  # fmt: skip
        yield model


def _remote_cli(tmp_path, server, *extra):
    outputs = ["--out", str(tmp_path / "mask.png"), "--trace", str(tmp_path / "trace.json")]
    command = [sys.executable, "-m", "IBISAgentLib", "segment", str(SAMPLE), "--prompt", "x", "--server", server.url,
               *outputs, "--jsonl", *extra]  # fmt: skip
    token = tmp_path / "token"
    token.write_text(server.token + "\n")
    return subprocess.Popen([*command, "--token-file", str(token)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})  # fmt: skip


def test_server_killed_after_three_steps_leaves_mask_trace_and_exit_1(tmp_path, tiny_models, slow_model):
    with ServerProcess("--mllm", slow_model.url, "--sam2", str(tiny_models[1])) as server:
        cli = _remote_cli(tmp_path, server)
        lines = [cli.stdout.readline() for _ in range(3)]
        server.kill()
        _, err = cli.communicate(timeout=120)
    steps = [json.loads(line) for line in lines]
    assert cli.returncode == 1, err
    assert "Traceback" not in err and "the run failed" in err
    trace = json.loads((tmp_path / "trace.json").read_text(encoding="utf-8"))
    jsonschema.validate(trace, SCHEMA)
    assert trace["stop_reason"] == "error" and "what the client received" in trace["error"]
    assert trace["steps"][:3] == steps and len(trace["steps"]) >= 3
    mask = np.asarray(Image.open(tmp_path / "mask.png")) > 0
    assert int(mask.sum()) == trace["steps"][-1]["mask_area"]


def test_a_full_queue_is_waited_out_as_retry_after_says(tmp_path, tiny_models, slow_model):
    with ServerProcess("--mllm", slow_model.url, "--sam2", str(tiny_models[1]), "--max-queue", "1") as server:
        backend = RemoteBackend(server.url, token=server.token)
        image = read_rgb_image(SAMPLE)
        busy = [backend.open_session(image, "x", max_turns=3) for _ in range(2)]
        runners = [threading.Thread(target=session.run) for session in busy]
        for runner in runners:
            runner.start()
            time.sleep(0.3)
        cli = _remote_cli(tmp_path, server, "--max-turns", "2")
        _, err = cli.communicate(timeout=180)
        for runner in runners:
            runner.join(timeout=60)
    assert cli.returncode == 0, err
    assert "the server is busy; trying again in 2 s" in err
    assert len(json.loads((tmp_path / "trace.json").read_text(encoding="utf-8"))["steps"]) == 2


def test_a_run_that_cannot_start_still_writes_what_the_user_had(tmp_path, tiny_models):
    initial = np.zeros((128, 128), np.uint8)
    initial[40:60, 40:60] = 255
    Image.fromarray(initial).save(tmp_path / "initial.png")
    replay = replay_file(tmp_path, [TERMINATE] * 4)
    with ServerProcess("--mllm", replay, "--sam2", str(tiny_models[1]), "--max-sessions", "1") as server:
        held = RemoteBackend(server.url, token=server.token).open_session(read_rgb_image(SAMPLE), "x")
        cli = _remote_cli(tmp_path, server, "--initial-mask", str(tmp_path / "initial.png"))
        _, err = cli.communicate(timeout=120)
        held.close()
    assert cli.returncode == 1 and "limit of 1 sessions" in err and "Traceback" not in err
    trace = json.loads((tmp_path / "trace.json").read_text(encoding="utf-8"))
    jsonschema.validate(trace, SCHEMA)
    assert trace["stop_reason"] == "error" and trace["steps"] == [] and "limit of 1 sessions" in trace["error"]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "mask.png")) > 0, initial > 0)
