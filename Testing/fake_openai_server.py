"""A small OpenAI-compatible chat-completions server on 127.0.0.1 standing in for vLLM/SGLang.

It records every request and answers from a script, or from ``respond(body)`` when given one, so tests
can check what crossed the wire and drive the client's error handling (4xx, 5xx, streamed chunks).
``latency`` holds every answer back (a model's time to answer, for throughput benchmarks); requests are
served on threads, so concurrent clients wait at the same time, as a batching server lets them.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeOpenAIServer:
    def __init__(
        self,
        models: list[str] | None = None,
        chunk_delay: float = 0.0,
        respond: Callable[[dict], tuple[int, str]] | None = None,
        latency: float = 0.0,
    ) -> None:
        self.models = models if models is not None else ["ibis-7b"]
        self.chunk_delay = chunk_delay
        self.respond = respond
        self.latency = latency
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.replies: list[tuple[int, str]] = []  # (status, content) answered in order; then 200 "Terminate"
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": m} for m in server.models]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                server.headers.append(dict(self.headers))
                time.sleep(server.latency)
                if server.respond is not None:
                    status, content = server.respond(body)
                else:
                    status, content = server.replies.pop(0) if server.replies else (200, "<action>Terminate</action>")
                if status != 200:
                    self._send(status, {"error": {"message": content}})
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for i in range(0, len(content), 7):
                    chunk = {"choices": [{"index": 0, "delta": {"content": content[i : i + 7]}}]}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                    time.sleep(server.chunk_delay)
                self.wfile.write(b"data: [DONE]\n\n")

            def _send(self, status, payload):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeOpenAIServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
