"""A fake Anthropic Messages API on 127.0.0.1, for running the real `anthropic` SDK in tests without a network.

    with FakeAnthropic([tool_use([{"tweaks": {...}, "rationale": "...", "falsification": "..."}])]) as fake:
        client = anthropic.Anthropic(base_url=fake.url, api_key="test")   # or ANTHROPIC_BASE_URL=fake.url
        ...
        fake.requests          # every request received: {"path", "headers", "body"}

POST /v1/messages answers from a script, one reply per request, in order: a Reply (status, JSON body, headers),
or a callable taking the request and returning one. When the script runs out, `default` answers (a 500 unless
given). Replies are shaped like the real API's: a message with content blocks, stop_reason and usage; errors as
{"type": "error", "error": {"type", "message"}} with the HTTP status the SDK maps to its exception classes.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_ids = itertools.count(1)


@dataclass
class Reply:
    status: int = 200
    body: dict = field(default_factory=dict)
    headers: dict = field(default_factory=dict)


def message(content: list[dict], stop_reason: str = "end_turn", input_tokens: int = 1000, output_tokens: int = 200,
            model: str = "claude-test") -> Reply:
    n = next(_ids)
    return Reply(200, {"id": f"msg_fake{n:04d}", "type": "message", "role": "assistant", "model": model,
                       "content": content, "stop_reason": stop_reason, "stop_sequence": None,
                       "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens}})


def tool_use(proposals: Any, input_tokens: int = 1000, output_tokens: int = 200, raw_input: Any = None,
             thinking: bool = True) -> Reply:
    """A propose_experiments call carrying `proposals` (or, with raw_input, exactly that as the tool input), after an
    (empty, as displayed by default) thinking block like the current models send."""
    content = [{"type": "thinking", "thinking": "", "signature": "sig"}] if thinking else []
    content.append({"type": "tool_use", "id": f"toolu_fake{next(_ids):04d}", "name": "propose_experiments",
                    "input": raw_input if raw_input is not None else {"proposals": proposals}})
    return message(content, "tool_use", input_tokens, output_tokens)


def insights_use(insights: Any, input_tokens: int = 800, output_tokens: int = 150) -> Reply:
    """A record_insights call carrying `insights` ([{text, hypotheses}])."""
    content = [{"type": "tool_use", "id": f"toolu_fake{next(_ids):04d}", "name": "record_insights",
                "input": {"insights": insights}}]
    return message(content, "tool_use", input_tokens, output_tokens)


def text(answer: str, stop_reason: str = "end_turn") -> Reply:
    return message([{"type": "text", "text": answer}], stop_reason)


def refusal(answer: str = "I can't help with that.") -> Reply:
    return message([{"type": "text", "text": answer}], "refusal")


def error(status: int, kind: str | None = None, text_: str = "fake error") -> Reply:
    kind = kind or {400: "invalid_request_error", 401: "authentication_error", 429: "rate_limit_error",
                    529: "overloaded_error"}.get(status, "api_error")
    # retry-after-ms: the SDK waits this long before its own retry (keeps retried tests fast).
    return Reply(status, {"type": "error", "error": {"type": kind, "message": text_}}, {"retry-after-ms": "5"})


class FakeAnthropic:
    def __init__(self, script: list[Reply | Callable[[dict], Reply]] | None = None, default: Reply | None = None):
        self.script = list(script or [])
        self.default = default or error(500, text_="the fake's script ran out")
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    body = {"unparsed": raw.decode("utf-8", "replace")}
                request = {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body}
                with fake._lock:
                    fake.requests.append(request)
                    step = fake.script.pop(0) if fake.script else fake.default
                reply = step(request) if callable(step) else step
                if self.path.split("?")[0] != "/v1/messages":
                    reply = error(404, "not_found_error", f"no route {self.path}")
                data = json.dumps(reply.body).encode()
                self.send_response(reply.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.send_header("request-id", f"req_fake{len(fake.requests):04d}")
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeAnthropic:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def bodies(self) -> list[dict]:
        return [r["body"] for r in self.requests]
