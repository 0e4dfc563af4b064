"""A real HTTP server on loopback that speaks the OpenAI chat-completions API with scripted answers.

``ScriptedChatServer(script)`` listens on 127.0.0.1 (a free port) in a thread. Each POST to
``/v1/chat/completions`` is recorded (body and headers) and answered by the next step of the script (the
last step repeats). A step is a function of the request body returning a :class:`Reply`, or a Reply:

* :func:`answer` / :func:`good_answer`: HTTP 200 with a chat completion whose message content is given
  (any text: good JSON, malformed JSON, an off-topic plan);
* :func:`status`: an HTTP error (500, 429 with Retry-After, 401) with an OpenAI-style error body;
* ``Reply(..., delay=s)``: the reply is sent after ``s`` seconds (a slow server).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict = field(default_factory=dict)
    delay: float = 0.0


def completion(content: str, model: str = "scripted") -> dict:
    return {"id": "chatcmpl-scripted", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


def answer(content: str, delay: float = 0.0) -> Reply:
    return Reply(200, json.dumps(completion(content)).encode(), {"Content-Type": "application/json"}, delay)


def status(code: int, message: str = "scripted error", headers: dict | None = None) -> Reply:
    body = json.dumps({"error": {"message": message, "type": "server_error", "code": code}}).encode()
    return Reply(code, body, {"Content-Type": "application/json", **(headers or {})})


def shot_of(body: dict) -> dict:
    """The shot data of a planner request (its first user message)."""
    user = next(m for m in body["messages"] if m["role"] == "user")
    return json.loads(user["content"])


def good_plan(body: dict, query: str = "a dog running across a field") -> dict:
    """A plan a careful LLM would write for the request: every required token, a plain query."""
    shot = shot_of(body)
    by_token = {c["token"]: c for c in shot["characters"]}
    parts = [f"({token} {by_token[token]['class_word']})1.3 running" for token in shot["must_include"]]
    if not parts:
        parts = ["a quiet scene of " + " ".join(shot["shot_text"].split()[:4]).strip(".,")]
    style = shot["story_style"]
    caption = ", ".join(parts + ["in a (green meadow)1.1"] + ([style] if style else []))
    return {"analysis": {"character": "the shot's characters, moving like a dog", "action": "running",
                         "setting": "a green meadow"},
            "motion_query": query, "caption": caption, "negative_prompt": "blurry, extra limbs"}


def good_answer(body: dict) -> Reply:
    return answer(json.dumps(good_plan(body)))


Step = Callable[[dict], Reply] | Reply


class ScriptedChatServer:
    def __init__(self, script: list[Step]):
        self.script = list(script)
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):          # quiet
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(status(404, f"no route {self.path}"))
                    return
                body = json.loads(raw)
                with server._lock:
                    index = len(server.requests)
                    server.requests.append(body)
                    server.headers.append({k.lower(): v for k, v in self.headers.items()})
                    step = server.script[min(index, len(server.script) - 1)]
                reply = step(body) if callable(step) else step
                if reply.delay:
                    time.sleep(reply.delay)
                self._send(reply)

            def _send(self, reply: Reply):
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass                           # the client gave up (timeout): fine

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> "ScriptedChatServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
