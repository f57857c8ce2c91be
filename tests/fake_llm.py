"""A scripted fake LLM server on loopback speaking the real wire formats: Anthropic Messages
(``POST /v1/messages``) and OpenAI chat completions (``POST /v1/chat/completions``).

The official SDKs are pointed at it through ``base_url``. It follows a script of
:class:`Turn` s: each turn makes the given tool calls (or answers with text) and first checks
the tool results the client sent back for the previous turn. It also checks every request
against the protocol (roles alternate, every tool call is answered by its id, tools are well
formed, an API key is sent) and answers a violation with a 400 like the real APIs; all
problems are collected in :attr:`FakeLLM.errors`. Requests without ``tools`` are taken as
the agent's context-summary calls and get :attr:`FakeLLM.summary_text` without using a
turn. :meth:`FakeLLM.inject` queues error statuses (429 with ``retry-after``, 5xx) that are
returned once each before the next real answer. Usage: input tokens are the request body's
length / 4, output tokens the reply's (or the turn's own numbers). (No tests here.)
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Turn:
    # tool calls to make: (name, arguments); arguments given as a str are sent as they are (OpenAI
    # only: malformed JSON); or a function(previous results) returning that list
    calls: list[tuple[str, Any]] | Callable[[list[dict[str, Any]]], list[tuple[str, Any]]] = field(default_factory=list)
    text: str = ""
    # substrings that must appear in the previous turn's tool results (in order of the calls),
    # or a function(results) that raises AssertionError; results: [{"id", "content", "is_error"}]
    expect: list[str | None] | Callable[[list[dict[str, Any]]], None] | None = None
    expect_errors: list[bool] | None = None  # is_error flags of the previous results
    usage: tuple[int, int] | None = None  # (input, output) tokens to report instead of the estimate


class FakeLLM:
    def __init__(self, script: list[Turn], summary_text: str = "SUMMARY: tried things; next steps.") -> None:
        self.script = list(script)
        self.summary_text = summary_text
        self.turn = 0
        self.requests: list[dict[str, Any]] = []
        self.summary_requests: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.failures: list[tuple[int, str | None]] = []
        self.served_failures: list[tuple[int, float]] = []
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> FakeLLM:  # noqa: PYI034
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> FakeLLM:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                status, body, headers = fake.handle(self.path, dict(self.headers), raw)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.server_address[1]

    @property
    def anthropic_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def url(self, backend: str) -> str:
        return self.anthropic_url if backend == "anthropic" else self.openai_url

    def inject(self, *statuses: int, retry_after: str | None = None) -> None:
        """Answer the next requests with these error statuses, once each."""
        with self.lock:
            self.failures += [(s, retry_after if s == 429 else None) for s in statuses]

    # ------------------------------------------------------------------ requests

    def handle(self, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, dict[str, Any], dict[str, str]]:
        headers = {k.lower(): v for k, v in headers.items()}
        if path.rstrip("/").endswith("/v1/messages"):
            api = "anthropic"
        elif path.rstrip("/").endswith("/chat/completions"):
            api = "openai"
        else:
            return 404, {"error": {"message": f"no route {path}"}}, {}
        with self.lock:
            if self.failures:
                status, retry_after = self.failures.pop(0)
                self.served_failures.append((status, time.monotonic()))
                return status, _error(api, status, f"injected {status}"), ({"retry-after": retry_after} if retry_after else {})
            try:
                body = json.loads(raw)
            except ValueError:
                return 400, _error(api, 400, "body is not JSON"), {}
            problems = (_check_anthropic if api == "anthropic" else _check_openai)(body, headers)
            record = {"api": api, "path": path, "body": body, "time": time.monotonic()}
            if problems:
                self.errors += [f"request {len(self.requests)}: {p}" for p in problems]
                self.requests.append(record)
                return 400, _error(api, 400, "; ".join(problems)), {}
            if not body.get("tools"):  # the agent's summary call
                self.summary_requests.append(record)
                return 200, _reply(api, body, self.summary_text, [], len(raw) // 4, None, len(self.requests)), {}
            results = _previous_results(api, body)
            record["results"] = results
            self.requests.append(record)
            if self.turn >= len(self.script):
                return 200, _reply(api, body, "I am done.", [], len(raw) // 4, None, len(self.requests)), {}
            turn = self.script[self.turn]
            self.turn += 1
            self._check_expectations(turn, results)
            calls = turn.calls
            if callable(calls):
                try:
                    calls = calls(results)
                except Exception as e:  # noqa: BLE001 - a broken script step is a test failure
                    self.errors.append(f"turn {self.turn - 1}: calls function failed: {type(e).__name__}: {e}")
                    calls = []
            record["max_tokens"] = body.get("max_tokens", body.get("max_completion_tokens"))
            usage = turn.usage or (len(raw) // 4, None)
            return 200, _reply(api, body, turn.text, calls, usage[0], usage[1], len(self.requests)), {}

    def _check_expectations(self, turn: Turn, results: list[dict[str, Any]]) -> None:
        where = f"turn {self.turn - 1}"
        if callable(turn.expect):
            try:
                turn.expect(results)
            except AssertionError as e:
                self.errors.append(f"{where}: {e}")
        elif turn.expect is not None:
            if len(results) < len(turn.expect):
                self.errors.append(f"{where}: expected {len(turn.expect)} tool results, got {len(results)}")
            for i, want in enumerate(turn.expect):
                if want is not None and i < len(results) and want not in results[i]["content"]:
                    self.errors.append(f"{where}: result {i} lacks {want!r}: {results[i]['content'][:600]!r}")
        if turn.expect_errors is not None:
            got = [r["is_error"] for r in results]
            if got != turn.expect_errors:
                self.errors.append(f"{where}: is_error flags {got} != {turn.expect_errors}: "
                                   + " | ".join(r["content"][:200] for r in results))


# ---------------------------------------------------------------------- wire formats


def _error(api: str, status: int, message: str) -> dict[str, Any]:
    if api == "anthropic":
        kind = {400: "invalid_request_error", 429: "rate_limit_error", 529: "overloaded_error"}.get(status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": message}}
    return {"error": {"message": message, "type": "rate_limit_exceeded" if status == 429 else "server_error",
                      "code": status}}


def _reply(api: str, body: dict[str, Any], text: str, calls: list[tuple[str, Any]], input_tokens: int,
           output_tokens: int | None, n: int) -> dict[str, Any]:
    if api == "anthropic":
        content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
        content += [{"type": "tool_use", "id": f"toolu_{n:03d}_{i}", "name": name, "input": args}
                    for i, (name, args) in enumerate(calls)]
        out = output_tokens if output_tokens is not None else len(json.dumps(content)) // 4 + 1
        return {"id": f"msg_{n:06d}", "type": "message", "role": "assistant", "model": body.get("model"),
                "content": content, "stop_reason": "tool_use" if calls else "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": input_tokens, "output_tokens": out,
                          "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}}
    tool_calls = [{"id": f"call_{n:03d}_{i}", "type": "function",
                   "function": {"name": name, "arguments": args if isinstance(args, str) else json.dumps(args)}} for i, (name, args) in enumerate(calls)]
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    out = output_tokens if output_tokens is not None else len(json.dumps(message)) // 4 + 1
    return {"id": f"chatcmpl-{n:06d}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model"), "choices": [{"index": 0, "message": message,
                                                     "finish_reason": "tool_calls" if calls else "stop"}],
            "usage": {"prompt_tokens": input_tokens, "completion_tokens": out, "total_tokens": input_tokens + out}}


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(b.get("text", "") for b in content if isinstance(b, dict))
    return ""


def _previous_results(api: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    msgs = body.get("messages", [])
    if api == "anthropic":
        last = msgs[-1] if msgs else {}
        blocks = last.get("content") if isinstance(last.get("content"), list) else []
        return [{"id": b["tool_use_id"], "content": _text_of(b.get("content")), "is_error": bool(b.get("is_error"))}
                for b in blocks if b.get("type") == "tool_result"]
    last = max((i for i, m in enumerate(msgs) if m.get("role") == "assistant"), default=len(msgs))
    return [{"id": m.get("tool_call_id"), "content": _text_of(m.get("content")),
             "is_error": _text_of(m.get("content")).startswith("ERROR")}
            for m in msgs[last + 1:] if m.get("role") == "tool"]


def _check_anthropic(body: dict[str, Any], headers: dict[str, str]) -> list[str]:
    p = []
    if not headers.get("x-api-key") and not headers.get("authorization"):
        p.append("no x-api-key header")
    if not headers.get("anthropic-version"):
        p.append("no anthropic-version header")
    if not body.get("model") or not isinstance(body.get("max_tokens"), int) or body["max_tokens"] < 1:
        p.append("model and a positive max_tokens are required")
    for t in body.get("tools") or []:
        if not t.get("name") or (t.get("input_schema") or {}).get("type") != "object":
            p.append(f"bad tool definition {t}")
    msgs = body.get("messages") or []
    if not msgs or msgs[0].get("role") != "user":
        p.append("messages must start with a user message")
    pending: set[str] = set()
    for i, m in enumerate(msgs):
        if i and m.get("role") == msgs[i - 1].get("role"):
            p.append(f"messages {i - 1} and {i} have the same role")
        content = m.get("content")
        blocks = content if isinstance(content, list) else [{"type": "text", "text": content}]
        if not blocks:
            p.append(f"message {i} is empty")
        for b in blocks:
            if b.get("type") == "text" and not b.get("text"):
                p.append(f"message {i} has an empty text block")
        if m.get("role") == "user":
            answered = {b.get("tool_use_id") for b in blocks if b.get("type") == "tool_result"}
            if answered != pending:
                p.append(f"message {i}: tool_result ids {sorted(answered)} do not answer tool_use ids {sorted(pending)}")
            pending = set()
        else:
            pending = {b.get("id") for b in blocks if b.get("type") == "tool_use"}
            if pending and body.get("tools") is None:
                p.append("tool_use blocks without tools defined")
    return p


def _check_openai(body: dict[str, Any], headers: dict[str, str]) -> list[str]:
    p = []
    if not headers.get("authorization", "").startswith("Bearer "):
        p.append("no bearer key")
    if not body.get("model"):
        p.append("no model")
    for t in body.get("tools") or []:
        fn = t.get("function") or {}
        if t.get("type") != "function" or not fn.get("name") or (fn.get("parameters") or {}).get("type") != "object":
            p.append(f"bad tool definition {t}")
    msgs = body.get("messages") or []
    pending: set[str] = set()
    for i, m in enumerate(msgs):
        role = m.get("role")
        if role == "tool":
            if m.get("tool_call_id") not in pending:
                p.append(f"message {i}: tool result for unknown call {m.get('tool_call_id')}")
            pending.discard(m.get("tool_call_id"))
            continue
        if pending:
            p.append(f"message {i}: tool calls {sorted(pending)} were not answered")
            pending = set()
        if role == "assistant":
            for tc in m.get("tool_calls") or []:
                try:
                    json.loads(tc["function"]["arguments"])
                except (KeyError, TypeError, ValueError):
                    p.append(f"message {i}: bad tool call {tc}")
                pending.add(tc.get("id"))
            if not m.get("tool_calls") and not m.get("content"):
                p.append(f"message {i}: empty assistant message")
        elif role not in ("system", "user"):
            p.append(f"message {i}: unknown role {role}")
    if not any(m.get("role") == "user" for m in msgs):
        p.append("no user message")
    return p
