"""The LLM researcher: one small tool-use loop with two adapters (Anthropic, OpenAI-compatible).

``run_llm_researcher(config)`` runs one researcher until it calls ``finish``, stops calling
tools, or a budget ends it, and returns a summary dict (``int()`` of which is the exit code
the launcher expects: 0 done, 1 crashed / API failure -> restart). ``config`` is the
researcher's :class:`~w2slab.researchers.contract.ResearcherConfig`, read as it is: its
identity and grader, kit, workspace, direction, ``budgets`` (usd, tokens, wall_seconds,
experiments, grader_queries; counted over restarts and resumes through its ``Usage`` file),
``stop_reason()`` (stop file, deadline, budgets), sandbox (``sandbox_spec()`` / ``run()``, its
GPUs), ``backend`` (``anthropic`` | ``openai``), ``model``, ``base_url``, ``api_key_env`` and the
loop's knobs in ``config.llm`` (:class:`~w2slab.researchers.contract.LLMOptions`: output tokens
per call, context window, when to summarise (or ``$W2SLAB_COMPACT_AT``), the price table (or
``$W2SLAB_PRICES``, see :mod:`w2slab.researchers.pricing`), turns, retries, wrap-up turns,
reserve seconds, auto-submission, shell timeout). :class:`Settings` holds only what is derived
from it: the API key, base URL, window, summarisation threshold and prices.

Running with real keys
----------------------
Anthropic (Messages API with tool use)::

    export ANTHROPIC_API_KEY=sk-ant-...          # or name another variable in api_key_env
    backend="anthropic", model="claude-sonnet-4-5"

OpenAI (chat completions with function calling)::

    export OPENAI_API_KEY=sk-...
    backend="openai", model="gpt-4.1"

Running against local servers (OpenAI-compatible; any key works, none is needed)
-------------------------------------------------------------------------------
The model must support tool/function calling through the server's chat template.

* vLLM: ``vllm serve Qwen/Qwen2.5-7B-Instruct --enable-auto-tool-choice --tool-call-parser hermes``
  then ``backend="openai", base_url="http://127.0.0.1:8000/v1", model="Qwen/Qwen2.5-7B-Instruct"``.
* ollama: ``ollama serve`` + ``ollama pull qwen2.5:7b`` then
  ``backend="openai", base_url="http://127.0.0.1:11434/v1", model="qwen2.5:7b"``.
* llama.cpp: ``llama-server -m model.gguf --jinja --port 8080`` then
  ``backend="openai", base_url="http://127.0.0.1:8080/v1", model="local"``.
* Anthropic-compatible gateways/proxies: ``backend="anthropic", base_url="http://host:port"``
  (the SDK appends ``/v1/messages``); ``$ANTHROPIC_BASE_URL`` / ``$OPENAI_BASE_URL`` work too.

Local servers (loopback / private addresses) are priced at $0 unless the price table names the
model; set ``context_window`` to the server's ``--max-model-len`` / ``-c`` so summarisation
starts in time (default 32k tokens for unknown models).

Design
------
Messages are kept in a neutral form (``user`` text, ``assistant`` text + tool calls,
``tool_results``); each adapter turns them into its wire format and parses replies back,
with the SDK's own retries off: :meth:`Agent._call` retries 429 / 408 / 409 / 5xx / 529
and connection errors with exponential backoff and jitter, honouring ``retry-after(-ms)``.
Token use comes from the API's usage fields (estimated from characters only when a server
omits them); dollars from the price table; both go to the researcher's ``Usage`` after every
call. Hard stops (usd, tokens, wall seconds / deadline, max_turns) are checked before each
call, whose ``max_tokens`` is lowered so that it cannot cross the token or dollar cap. Soft
stops (experiment or grader-query budget used up, the stop file, the deadline minus
``reserve_seconds``; the tools themselves refuse over-budget experiments and queries) tell
the model to wrap up and give it ``wrapup_turns`` more calls. When the session ends without
any submission, the best method evaluated on the dev half (else the latest experiment) is
submitted for it. When the running context passes the threshold, everything but the latest
exchange is summarised by the model in one call, the summary appended to the notebook and
those turns replaced by it (the transcript keeps them all). Every message, tool call, tool
result, retry, summary and stop goes to the researcher's
:class:`~w2slab.researchers.contract.Transcript` as it happens.
"""

from __future__ import annotations

import email.utils
import json
import os
import random
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from w2slab.researchers import pricing
from w2slab.researchers.client import GraderClient
from w2slab.researchers.contract import Budgets, ResearcherConfig, Transcript, Usage
from w2slab.researchers.tools import NOTEBOOK, PROJECT_ROOT, Toolbox, ToolContext, truncate

DEFAULT_MAX_TOKENS = 8192
DEFAULT_WINDOW = {"anthropic": 200_000, "openai": 128_000, "local": 32_000}
RETRYABLE = {408, 409, 429, 529}
CONTEXT_ERRORS = ("prompt is too long", "context length", "context_length", "maximum context", "too many tokens",
                  "context window", "exceeds the context")

# --------------------------------------------------------------------------- config


@dataclass
class Settings:
    """What the agent derives from its :class:`ResearcherConfig` (read directly for everything
    else): the API to call (key from the environment variable the config names, base URL), the
    context window and the summarisation threshold, prompt caching and the price table."""

    backend: str
    model: str
    base_url: str | None
    api_key: str
    context_window: int
    compact_at: int
    prompt_cache: bool
    request_timeout: float
    notebook: Path
    prices: dict[str, pricing.Price] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: ResearcherConfig) -> Settings:
        backend, k = config.backend.lower(), config.llm
        if backend not in ("anthropic", "openai"):
            raise ValueError(f"unknown LLM backend '{backend}' (anthropic or openai)")
        env_base = "ANTHROPIC_BASE_URL" if backend == "anthropic" else "OPENAI_BASE_URL"
        base_url = config.base_url or os.environ.get(env_base) or None
        if base_url:
            base_url = _normalise_base_url(backend, base_url)
        key_env = config.api_key_env or ("ANTHROPIC_API_KEY" if backend == "anthropic" else "OPENAI_API_KEY")
        api_key = os.environ.get(key_env)
        if not api_key:
            if base_url:  # a local server: vLLM/ollama/llama.cpp accept anything
                api_key = "not-needed"
            else:
                raise ValueError(f"no API key: set ${key_env} (or api_key_env in the researcher config), "
                                 "or give a base_url for a local server")
        model = config.model or ("claude-sonnet-4-5" if backend == "anthropic" else "gpt-4.1")
        local = pricing.is_local(base_url)
        window = int(k.context_window or pricing.context_window(model, DEFAULT_WINDOW["local" if local else backend]))
        compact = k.compact_at_tokens or os.environ.get("W2SLAB_COMPACT_AT")
        compact_at = int(float(compact)) if compact else int(min(0.5 * window, 80_000))
        return cls(backend=backend, model=str(model), base_url=base_url, api_key=str(api_key), context_window=window,
                   compact_at=compact_at, prompt_cache=k.prompt_cache if k.prompt_cache is not None else base_url is None,
                   request_timeout=float(k.request_timeout), notebook=Path(config.workspace).absolute() / NOTEBOOK,
                   prices=pricing.load_prices(k.prices_file))


def _normalise_base_url(backend: str, url: str) -> str:
    from urllib.parse import urlparse

    url = url.rstrip("/")
    path = urlparse(url).path
    if backend == "openai" and path in ("", "/"):
        return url + "/v1"  # vLLM / ollama / llama.cpp serve the API under /v1
    if backend == "anthropic" and path.endswith("/v1"):
        return url[: -len("/v1")]  # the SDK appends /v1/messages itself
    return url


# --------------------------------------------------------------------------- neutral messages


@dataclass
class ToolCall:
    id: str
    name: str
    args: Any  # dict when it parsed
    raw_args: str = ""
    parse_error: str | None = None


@dataclass
class TokenCount:
    """Tokens of one API call, or summed over calls (the accounting record is ``contract.Usage``)."""

    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_write: int = 0
    estimated: bool = False

    @property
    def prompt(self) -> int:
        return self.input + self.cache_read + self.cache_write

    @property
    def total(self) -> int:
        return self.prompt + self.output


@dataclass
class Reply:
    text: str
    tool_calls: list[ToolCall]
    usage: TokenCount
    stop_reason: str | None
    raw: Any = None  # the assistant message in the adapter's wire format, for exact round trips


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "text": text}


def _chars(messages: list[dict[str, Any]]) -> int:
    return len(json.dumps([{k: v for k, v in m.items() if k != "raw"} for m in messages], default=str))


class ContextTooLong(RuntimeError):
    pass


class FatalAPIError(RuntimeError):
    pass


def _retry_after(headers: Any) -> float | None:
    if headers is None:
        return None
    try:
        ms = headers.get("retry-after-ms")
        if ms:
            return max(0.0, float(ms) / 1000)
        value = headers.get("retry-after")
        if not value:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError, AttributeError):
        return None


class Adapter:
    """One API's wire format: messages out, a :class:`Reply` in, and how its errors look."""

    name = ""
    connection_errors: tuple[type[BaseException], ...] = ()

    def complete(self, system: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                 max_tokens: int) -> Reply:
        raise NotImplementedError

    def classify(self, exc: BaseException) -> tuple[int | None, float | None, str]:
        """(HTTP status or 0 for a connection failure or None if not an API error, retry-after, message)."""
        if isinstance(exc, self.connection_errors):
            return 0, None, str(exc)
        status = getattr(exc, "status_code", None)
        if isinstance(status, int):
            return status, _retry_after(getattr(getattr(exc, "response", None), "headers", None)), str(exc)
        return None, None, f"{type(exc).__name__}: {exc}"


class AnthropicAdapter(Adapter):
    name = "anthropic"

    def __init__(self, s: Settings) -> None:
        import anthropic

        self.model, self.cache = s.model, s.prompt_cache
        self.client = anthropic.Anthropic(api_key=s.api_key, base_url=s.base_url, max_retries=0,
                                          timeout=s.request_timeout)
        self.connection_errors = (anthropic.APIConnectionError,)

    def wire(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for m in messages:
            if m["role"] == "assistant":
                blocks = m.get("raw") if m.get("backend") == self.name and m.get("raw") else None
                if blocks is None:
                    blocks = ([{"type": "text", "text": m["text"]}] if m.get("text") else []) + [
                        {"type": "tool_use", "id": c["id"], "name": c["name"],
                         "input": c["args"] if isinstance(c["args"], dict) else {}} for c in m.get("tool_calls", [])]
                role, content = "assistant", blocks or [{"type": "text", "text": "(no reply)"}]
            elif m["role"] == "tool_results":
                role, content = "user", [{"type": "tool_result", "tool_use_id": r["id"], "content": r["content"] or "(empty)",
                                          **({"is_error": True} if r.get("is_error") else {})} for r in m["results"]]
            else:
                role, content = "user", [{"type": "text", "text": m["text"] or "(empty)"}]
            if out and out[-1]["role"] == role:  # the API wants strict alternation: merge
                out[-1]["content"] = out[-1]["content"] + content
            else:
                out.append({"role": role, "content": [dict(b) for b in content]})
        if self.cache and out and out[-1]["role"] == "user":
            out[-1]["content"][-1] = {**out[-1]["content"][-1], "cache_control": {"type": "ephemeral"}}
        return out

    def complete(self, system: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                 max_tokens: int) -> Reply:
        kwargs: dict[str, Any] = {"model": self.model, "max_tokens": max_tokens, "messages": self.wire(messages)}
        if system:
            kwargs["system"] = ([{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}]
                                if self.cache else system)
        if tools:
            kwargs["tools"] = tools
        resp = self.client.messages.create(**kwargs)
        text, calls, raw = [], [], []
        for b in resp.content:
            kind = getattr(b, "type", "")
            if kind == "text":
                text.append(b.text)
                raw.append({"type": "text", "text": b.text})
            elif kind == "tool_use":
                args = b.input if isinstance(b.input, dict) else {}
                calls.append(ToolCall(b.id, b.name, args, json.dumps(b.input)))
                raw.append({"type": "tool_use", "id": b.id, "name": b.name, "input": b.input})
            elif kind == "thinking":
                raw.append({"type": "thinking", "thinking": b.thinking, "signature": b.signature})
            elif kind == "redacted_thinking":
                raw.append({"type": "redacted_thinking", "data": b.data})
        u = resp.usage
        usage = TokenCount(int(u.input_tokens or 0), int(u.output_tokens or 0),
                      int(getattr(u, "cache_read_input_tokens", 0) or 0),
                      int(getattr(u, "cache_creation_input_tokens", 0) or 0))
        return Reply("".join(text), calls, usage, resp.stop_reason, raw)


class OpenAIAdapter(Adapter):
    name = "openai"

    def __init__(self, s: Settings) -> None:
        import openai

        self.model = s.model
        # OpenAI itself wants max_completion_tokens (o-series/gpt-5 refuse max_tokens); servers take max_tokens
        self.official = s.base_url is None or "api.openai.com" in s.base_url
        self.client = openai.OpenAI(api_key=s.api_key, base_url=s.base_url, max_retries=0, timeout=s.request_timeout)
        self.connection_errors = (openai.APIConnectionError,)

    def wire(self, system: str, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
        for m in messages:
            if m["role"] == "assistant":
                msg: dict[str, Any] = {"role": "assistant", "content": m.get("text") or None}
                if m.get("tool_calls"):
                    msg["tool_calls"] = [{"id": c["id"], "type": "function", "function": {
                        "name": c["name"], "arguments": c.get("raw_args") or json.dumps(c["args"])}}
                        for c in m["tool_calls"]]
                elif msg["content"] is None:
                    msg["content"] = "(no reply)"
                out.append(msg)
            elif m["role"] == "tool_results":
                out += [{"role": "tool", "tool_call_id": r["id"], "content": r["content"] or "(empty)"} for r in m["results"]]
            else:
                out.append({"role": "user", "content": m["text"] or "(empty)"})
        return out

    def complete(self, system: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                 max_tokens: int) -> Reply:
        kwargs: dict[str, Any] = {"model": self.model, "messages": self.wire(system, messages)}
        kwargs["max_completion_tokens" if self.official else "max_tokens"] = max_tokens
        if tools:
            kwargs["tools"] = tools
        resp = self.client.chat.completions.create(**kwargs)
        if not resp.choices:
            raise FatalAPIError(f"the server returned no choices: {resp}")
        choice = resp.choices[0]
        msg = choice.message
        calls = []
        for i, tc in enumerate(msg.tool_calls or []):
            fn = getattr(tc, "function", None)
            if fn is None:
                continue
            raw_args = fn.arguments or "{}"
            try:
                args, err = json.loads(raw_args), None
            except ValueError as e:
                args, err = None, f"the arguments are not valid JSON ({e}): {raw_args[:500]}"
            calls.append(ToolCall(tc.id or f"call_{uuid.uuid4().hex[:12]}_{i}", fn.name, args, raw_args, err))
        u = resp.usage
        if u is not None and (u.prompt_tokens or u.completion_tokens):
            details = getattr(u, "prompt_tokens_details", None)
            cached = int(getattr(details, "cached_tokens", 0) or 0) if details else 0
            usage = TokenCount(int(u.prompt_tokens or 0) - cached, int(u.completion_tokens or 0), cached)
        else:  # some servers omit usage: estimate (~4 characters a token)
            usage = TokenCount(len(json.dumps(kwargs["messages"])) // 4,
                          (len(msg.content or "") + sum(len(c.raw_args) for c in calls)) // 4 + 1, estimated=True)
        return Reply(msg.content or "", calls, usage, choice.finish_reason, None)


ADAPTERS = {"anthropic": AnthropicAdapter, "openai": OpenAIAdapter}

class RunSummary(dict):
    """The run's summary; ``int()`` of it is the process exit code the launcher expects
    (0: finished or stopped by a budget; 1: crashed or the API failed, so restart)."""

    def __int__(self) -> int:
        return 1 if self.get("stop_reason") in ("crashed", "api_error") else 0


# --------------------------------------------------------------------------- prompts

SYSTEM_PROMPT = """\
You are {name}, an automated alignment researcher working on weak-to-strong (W2S) generalisation: \
training a strong student model from a weaker teacher's imperfect labels so that the student \
outperforms its teacher. Your goal is to find methods with a high PGR (performance gap recovered \
= (student acc - weak acc) / (strong ceiling acc - weak acc)) on the testbed `{testbed}`, and to \
share what you learn with the other researchers on the forum.

{direction_block}## Your setup
- Workspace (your cwd; read-write; persists): {workspace}
- Researcher kit (read-only, NO labels): {kit}
{kit_info}
- Nobody here has labels: only the grader scores predictions. `evaluate` gives dev-half feedback \
(a small budget); `submit` is scored on the hidden board third and goes on the leaderboard, behind a Ladder \
(a submission shows its own rounded numbers only when it beats your best board score by the margin). \
When the run ends, your best board submission (or the one you pick with `POST /api/final`) is \
scored once on a sealed holdout: that score is the result.
- The grader runs a Ladder per seed: `evaluate` returns new numbers (`"improved": true`) only when \
your dev accuracy beats your best so far on that seed by more than the margin (`ladder`, in PGR \
`ladder_pgr`); otherwise `"improved": false` with that best's numbers again, i.e. that run is no \
better than your best on that seed. Compare methods on the same seeds (at most 5 seeds per testbed).

## The method contract
A method is a Python file in your workspace (keep them under `ideas/`, one folder per idea, e.g. \
`ideas/<idea>/method.py`: `submit` uploads that folder as your code snapshot) with exactly one function \
decorated with `@method("name")`:

```python
import numpy as np
from w2slab.methods import MethodContext, method

@method("my-idea")
def my_idea(ctx: MethodContext, temperature: float = 1.0) -> np.ndarray:
    # ctx.train: unlabeled training rows (ctx.train.rows: list of dicts; ctx.train.subset(idx))
    # ctx.weak_probs: (N_train, 2) teacher soft labels; ctx.weak_hard: argmax; ctx.weak_test_probs: (N_test, 2)
    # ctx.test: test rows; ctx.seed; ctx.notes: dict of metrics to report
    # ctx.new_student(**overrides) -> an untrained strong model with
    #   .fit(split, targets (N,) or (N, 2), weights=None, loss=None, seed=...) -> itself
    #   .predict_proba(split) -> (N, 2); .features(split) -> (N, D) representation
    # a custom loss: loss(logits, targets, weights, progress) -> scalar torch tensor
    student = ctx.new_student().fit(ctx.train, ctx.weak_probs, seed=ctx.seed)
    return student.predict_proba(ctx.test)  # (N_test, 2), rows in order
```
Keyword parameters with defaults are the method's config (`run_experiment` params override them). \
Built-in baselines (naive, soft, aux-conf, confident, self-train, unsupervised) are in \
`{project}/w2slab/methods/builtin.py`; read it for examples.

## Tools
`shell` (sandboxed: no network, no labels), `read_file` / `write_file` / `edit_file` (workspace only), \
`run_experiment` (your method on every kit seed; predictions stay in your workspace), `evaluate`, \
`submit`, `leaderboard`, `forum_read` / `forum_search` / `forum_post` / `forum_comment` / `forum_vote`, \
`download_snapshot` (others' code, from leaderboard or forum links), `notebook_read` / `notebook_write` \
(your persistent memory: record hypotheses, results and next steps; it survives restarts and older \
turns of this conversation are summarised into it), `finish`.

## Budgets (hard limits; the session ends when one runs out)
{budgets}

## How to work
1. Read the forum and leaderboard first: build on others' findings, do not repeat them.
2. Form a hypothesis, write a method, `run_experiment`, `evaluate` one seed; iterate.
3. Post results to the forum (kind result / negative_result / insight / hypothesis) with numbers, \
including negative results, and link your submissions and snapshots.
4. `submit` your best method with its predictions for all seeds before your budget runs out.
5. Keep notes in your notebook as you go. When done, call `finish` with a summary.
Be concise in your messages; spend your budget on experiments. Never try to obtain test labels.
"""


def _kit_info(kit_dir: Path | None, ctx: ToolContext) -> str:
    if not kit_dir or not (kit_dir / "kit.json").is_file():
        return "- (no kit configured)"
    meta = json.loads((kit_dir / "kit.json").read_text())
    return (f"- Kit: testbed {meta.get('testbed')}, kind {meta.get('kind')}, {meta.get('n_train')} unlabeled "
            f"train rows, {meta.get('n_test')} test rows, seeds {meta.get('seeds')}; `run_experiment` runs seeds "
            f"{ctx.kit_seeds()} (the grader's submission seeds)\n"
            f"- Weak teacher: {json.dumps(meta.get('weak'))}\n- Strong student: {json.dumps(meta.get('strong'))}")


def _budget_lines(b: Budgets) -> str:
    items = [("US dollars", b.usd), ("tokens", b.tokens), ("wall-clock seconds", b.wall_seconds),
             ("experiments (run_experiment)", b.experiments), ("grader queries (evaluate + submit)", b.grader_queries)]
    return "\n".join(f"- {label}: {v:g}" for label, v in items if v is not None) or "- none set"


# --------------------------------------------------------------------------- the loop



HARD_STOPS = {"token budget": "budget:tokens", "dollar budget": "budget:usd"}  # launcher reasons: no more calls


class Agent:
    """The loop: call the model, run the tools it asks for, feed the results back; keep the
    context small, the accounts straight and the budgets hard."""

    def __init__(self, config: ResearcherConfig, s: Settings, adapter: Adapter, toolbox: Toolbox,
                 transcript: Transcript) -> None:
        self.cfg, self.s, self.adapter, self.toolbox, self.log = config, s, adapter, toolbox, transcript
        self.b, self.k = config.budgets, config.llm  # budgets and LLM knobs, read as they are
        self.acct = toolbox.ctx.usage  # the researcher's Usage: cumulative over restarts and resumes
        self.price, self.price_source = pricing.price_for(s.model, s.base_url, s.prices)
        self.tool_schemas = toolbox.schemas(adapter.name)
        self.tools_chars = len(json.dumps(self.tool_schemas))
        self.started = time.monotonic()
        self.usage = TokenCount()  # this session's tokens
        self.usd = 0.0  # this session's dollars
        self.calls = self.retries = self.compactions = self.tool_errors = 0
        self.last_call = TokenCount()
        self.context_tokens = 0  # prompt size of the latest call + output; what was appended since:
        self.appended_chars = 0
        self.finished_summary: str | None = None
        self.wrapup_left: int | None = None  # calls left after a soft stop
        self.soft_reason: str | None = None
        self.stop_reason = ""
        self.stop_detail = ""
        self.auto_submission: dict[str, Any] | None = None
        self.system = SYSTEM_PROMPT.format(
            name=config.name, testbed=config.testbed, workspace=toolbox.ctx.workspace, kit=config.kit_dir or "(none)",
            kit_info=_kit_info(toolbox.ctx.kit_dir, toolbox.ctx), project=PROJECT_ROOT,
            direction_block=f"## Your research direction\n{config.direction}\n\n" if config.direction else "",
            budgets=_budget_lines(config.budgets))
        self.task = self._task()
        self.messages: list[dict[str, Any]] = [user(self.task)]

    def _task(self) -> str:
        a, ws = self.acct, self.toolbox.ctx.workspace
        files = sorted(str(p.relative_to(ws)) for p in ws.rglob("*")
                       if p.is_file() and not any(part.startswith(".") for part in p.relative_to(ws).parts))
        used = (f"Used so far (all sessions): {a.experiments} experiments, {a.grader_queries} grader queries, "
                f"{a.submissions} submissions, {a.findings_posted} forum posts, {a.tokens_in + a.tokens_out} tokens, "
                f"${a.usd:.2f}.")
        return (f"Begin your research on `{self.cfg.testbed}`."
                + (f" Your direction: {self.cfg.direction}" if self.cfg.direction else "")
                + f"\n\n{used}\nFiles in your workspace: {', '.join(files[:200]) or 'none'}"
                + f"\n\nYour notebook (from earlier sessions) holds:\n{truncate(self.toolbox.notebook_read(), 8000)}")

    # ----------------------------------------------------------- accounting and budgets

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def _account(self, u: TokenCount) -> None:
        self.calls += 1
        for k in ("input", "output", "cache_read", "cache_write"):
            setattr(self.usage, k, getattr(self.usage, k) + getattr(u, k))
        self.usage.estimated |= u.estimated
        cost = self.price.cost(u.input, u.output, u.cache_read, u.cache_write)
        self.usd += cost
        self.last_call = u
        self.acct.add_tokens(u.prompt, u.output, cost)  # persisted for the launcher

    def _append(self, message: dict[str, Any]) -> None:
        self.messages.append(message)
        self.appended_chars += _chars([message])

    def projected_prompt(self) -> int:
        return self.context_tokens + self.appended_chars // 4

    def wall_left(self) -> float | None:
        """Seconds until the hard wall-clock end (budget over all sessions, or the deadline)."""
        lefts = []
        if self.b.wall_seconds is not None:
            lefts.append(self.b.wall_seconds - self.acct.wall_seconds())
        if self.cfg.deadline is not None:
            lefts.append(float(self.cfg.deadline) - time.time())
        return min(lefts) if lefts else None

    def hard_stop(self) -> str | None:
        left = self.wall_left()
        if left is not None and left <= 0:
            return "budget:wall_seconds"
        if self.b.tokens is not None and self.acct.tokens_in + self.acct.tokens_out >= self.b.tokens:
            return "budget:tokens"
        if self.b.usd is not None and self.acct.usd >= self.b.usd:
            return "budget:usd"
        if self.calls >= self.k.max_turns:
            return "max_turns"
        return None

    def soft_stop(self) -> str | None:
        """A reason to wrap up: the config's stop rule (stop file, deadline minus the reserve, budgets)."""
        return self.cfg.stop_reason(self.acct, reserve=self.k.reserve_seconds)

    def output_allowance(self, want: int) -> tuple[int, str | None]:
        """max_tokens for the next call such that no budget can be crossed, or a stop reason."""
        if (stop := self.hard_stop()) is not None:
            return 0, stop
        prompt = max(self.projected_prompt(), (_chars(self.messages) + len(self.system) + self.tools_chars) // 4)
        allow = want
        if self.b.tokens is not None:
            left = self.b.tokens - self.acct.tokens_in - self.acct.tokens_out - prompt
            allow = min(allow, int(left))
            if allow < min(256, want):
                return 0, "budget:tokens"
        if self.b.usd is not None and self.price.output > 0:
            left_usd = self.b.usd - self.acct.usd - self.price.cost(prompt, 0)
            allow = min(allow, int(left_usd / self.price.output * 1e6))
            if allow < min(256, want):
                return 0, "budget:usd"
        return allow, None

    # ----------------------------------------------------------- API calls with retries

    def _call(self, system: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
              max_tokens: int, purpose: str) -> Reply:
        attempt = 0
        while True:
            try:
                reply = self.adapter.complete(system, messages, tools, max_tokens)
                self._account(reply.usage)
                return reply
            except FatalAPIError:
                raise
            except Exception as exc:
                status, retry_after, message = self.adapter.classify(exc)
                if status is None:
                    raise FatalAPIError(message) from exc
                if status == 400 and any(p in message.lower() for p in CONTEXT_ERRORS):
                    raise ContextTooLong(message) from exc
                retryable = status == 0 or status in RETRYABLE or status >= 500
                if not retryable or attempt >= self.k.max_retries:
                    raise FatalAPIError(f"{status}: {message}" + (" (gave up after retries)" if retryable else "")) from exc
                delay = retry_after if retry_after is not None else min(
                    self.k.retry_cap_seconds, self.k.retry_base_seconds * 2 ** attempt) * (0.5 + random.random() / 2)
                left = self.wall_left()
                if left is not None and delay >= left:
                    raise FatalAPIError(f"{status}: {message} (no wall-clock budget left to wait {delay:.1f} s)") from exc
                attempt += 1
                self.retries += 1
                self.log.event("retry", status=status, attempt=attempt, delay_s=round(delay, 3),
                               retry_after=retry_after, purpose=purpose, error=message[:2000])
                time.sleep(delay)

    # ----------------------------------------------------------- context summarisation

    def _render(self, messages: list[dict[str, Any]], per_message: int = 4000) -> str:
        parts = []
        for m in messages:
            if m["role"] == "user":
                parts.append(f"[user]\n{truncate(m['text'], per_message)}")
            elif m["role"] == "assistant":
                calls = "\n".join(f"-> {c['name']}({truncate(c.get('raw_args') or json.dumps(c['args']), per_message)})"
                                  for c in m.get("tool_calls", []))
                parts.append(f"[assistant]\n{truncate(m.get('text') or '', per_message)}\n{calls}".rstrip())
            else:
                for r in m["results"]:
                    err = " (error)" if r.get("is_error") else ""
                    parts.append(f"[result of {r['name']}{err}]\n{truncate(r['content'], per_message)}")
        return "\n\n".join(parts)

    def compact(self, reason: str) -> bool:
        """Summarise all but the latest exchange into the notebook and replace those turns by it."""
        msgs = self.messages
        cut = max((i for i, m in enumerate(msgs) if m["role"] == "assistant" and i >= 1), default=0)
        if len(msgs) - cut < self.k.keep_recent and cut > 1:
            cut = max((i for i, m in enumerate(msgs[:cut]) if m["role"] == "assistant"), default=cut)
        if cut <= 1:
            return False  # nothing old enough to summarise
        old, tail = msgs[:cut], msgs[cut:]
        history = truncate(self._render(old), max(20_000, int(self.s.compact_at * 4 * 0.8)))
        prompt = ("Below is the working history of a research session (yours). It is about to be removed from "
                  "the context to make room. Write a faithful, specific summary to continue the work from: the "
                  "goal and direction; every method/file written (paths) and parameters tried; every result with "
                  "its numbers (dev PGR, transfer accuracy, submissions and their ids, snapshot shas); forum posts "
                  "read or written; errors met and how they were solved; the current best idea; open hypotheses "
                  "and concrete next steps. Use markdown bullets. Do not call tools.\n\n=== HISTORY ===\n" + history)
        before = self.projected_prompt()
        try:
            allow, stop = self.output_allowance(min(4096, self.k.max_output_tokens))
            if stop:
                raise FatalAPIError(f"no budget left for a summary call ({stop})")
            reply = self._call("You write concise, faithful research summaries.", [user(prompt)], None, allow,
                               purpose="summary")
            summary, how = reply.text.strip(), "model"
            if not summary:
                raise FatalAPIError("the model returned an empty summary")
        except (FatalAPIError, ContextTooLong) as e:  # never drop turns silently: keep a mechanical digest
            summary, how = truncate(self._render(old, 600), 12_000), "digest"
            self.log.event("summary_fallback", error=str(e)[:2000])
        self.compactions += 1
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        self.toolbox.notebook_write(f"## Context summary {self.compactions} ({stamp}, {len(old)} messages, "
                                    f"by {how})\n\n{summary}\n")
        first = (f"{self.task}\n\n## Summary of your earlier work in this session (also saved in your notebook, "
                 f"summary {self.compactions})\n{summary}\n\n(The conversation continues from here.)")
        self.messages = [user(first)] + tail
        self.context_tokens = (_chars(self.messages) + len(self.system) + self.tools_chars) // 4
        self.appended_chars = 0
        self.log.event("summary", content=summary, reason=reason, method=how, replaced_messages=len(old),
                       kept_messages=len(tail), context_tokens_before=before, context_tokens_after=self.context_tokens,
                       tokens=asdict(self.last_call) if how == "model" else None)
        return True

    # ----------------------------------------------------------- tools

    def _run_tools(self, calls: list[ToolCall]) -> list[dict[str, Any]]:
        results = []
        for c in calls:
            t0 = time.monotonic()
            self.log.tool_call(c.name, c.args if c.parse_error is None else c.raw_args, id=c.id)
            if c.parse_error:
                content, is_error, full = f"ERROR: {c.name}: {c.parse_error}", True, None
            else:
                r = self.toolbox.call(c.name, c.args)
                content, is_error, full = r.content, r.is_error, r.full
            self.tool_errors += int(is_error)
            if c.name == "finish" and not is_error:
                self.finished_summary = str(c.args.get("summary", ""))
            self.log.tool_result(c.name, content, id=c.id, is_error=is_error, tokens={"estimated": len(content) // 4},
                                 seconds=round(time.monotonic() - t0, 3), **({"full_result": full} if full else {}))
            results.append({"id": c.id, "name": c.name, "content": content, "is_error": is_error})
        return results

    def _say(self, text: str) -> None:
        self._append(user(text))
        self.log.message("user", text)

    # ----------------------------------------------------------- main loop

    def run(self) -> str:
        self.acct.status, self.acct.stop_reason = "running", None
        if hasattr(self.acct, "pid"):
            self.acct.pid = os.getpid()
        self.acct.save()
        self.log.message("system", self.system)
        self.log.message("user", self.task)
        nudges = self.k.nudges
        context_retry = False
        while True:
            if self.wrapup_left is None and (soft := self.soft_stop()) is not None:
                if soft in HARD_STOPS:
                    return self._stop(HARD_STOPS[soft], soft)
                self.soft_reason, self.wrapup_left = soft, self.k.wrapup_turns
                self.log.event("wrap_up", reason=soft, turns=self.wrapup_left)
                self._say(f"STOP: {soft}. Wrap up now, within {self.wrapup_left} more replies: submit your best "
                          "method if you have not (from predictions you already have), post your key findings to the "
                          "forum, note them in your notebook, then call `finish`.")
            if self.wrapup_left is not None:
                if self.wrapup_left <= 0:
                    return self._stop(f"wrapped_up:{self.soft_reason}")
                self.wrapup_left -= 1
            if self.projected_prompt() >= self.s.compact_at:
                self.compact(f"context {self.projected_prompt()} tokens >= {self.s.compact_at}")
            max_tokens, stop = self.output_allowance(self.k.max_output_tokens)
            if stop:
                return self._stop(stop)
            try:
                reply = self._call(self.system, self.messages, self.tool_schemas, max_tokens, purpose="turn")
            except ContextTooLong as e:
                if context_retry or not self.compact(f"the API said the context is too long: {e}"):
                    return self._stop("api_error", str(e))
                context_retry = True
                continue
            except FatalAPIError as e:
                return self._stop("api_error", str(e))
            context_retry = False
            self.context_tokens, self.appended_chars = reply.usage.prompt + reply.usage.output, 0
            # unparseable arguments go back as {} (servers re-parse history; the error result explains)
            calls = [{"id": c.id, "name": c.name, "args": c.args if c.parse_error is None else {},
                      "raw_args": c.raw_args if c.parse_error is None else "{}"} for c in reply.tool_calls]
            self.messages.append({"role": "assistant", "text": reply.text, "tool_calls": calls, "raw": reply.raw,
                                  "backend": self.adapter.name})
            self.log.message("assistant", reply.text, tokens=asdict(reply.usage), tool_calls=calls,
                             stop_reason=reply.stop_reason, usd=round(self.usd, 6),
                             total_tokens=self.acct.tokens_in + self.acct.tokens_out)
            if (over := self.hard_stop()) is not None:
                return self._stop(over, "reached during the last call; its tool calls were not run")
            if not reply.tool_calls:
                if nudges <= 0:
                    return self._stop("model_stopped")
                nudges -= 1
                self._say("You replied without calling a tool. If your research is done, call `finish` with a "
                          "summary; otherwise continue with your next step.")
                continue
            nudges = self.k.nudges
            results = self._run_tools(reply.tool_calls)
            self._append({"role": "tool_results", "results": results})
            if self.finished_summary is not None:
                return self._stop("finished")

    def _stop(self, reason: str, detail: str = "") -> str:
        self.stop_reason, self.stop_detail = reason, detail
        self.acct.status, self.acct.stop_reason = "finishing", reason
        self.acct.save()
        self.log.event("stop", reason=reason, detail=detail, tokens=asdict(self.usage), usd=round(self.usd, 6),
                       wall_seconds=round(self.elapsed(), 3))
        return reason

    def final_submission(self) -> None:
        """Submit the best method of this session (best dev PGR, else the latest experiment) when
        nothing was ever submitted: the launcher's contract is to end with a submission."""
        ctx = self.toolbox.ctx
        if not self.k.auto_submit or ctx.client is None or ctx.submissions or self.acct.submissions:
            return
        if self.stop_reason in ("crashed", "api_error"):
            return  # the launcher restarts this researcher: it submits later
        scored = [e for e in ctx.evaluations if e.get("method_file") and isinstance(e.get("pgr"), (int, float))]
        if scored:
            pick = max(scored, key=lambda e: e["pgr"])
        elif ctx.experiments:
            pick = ctx.experiments[-1]
        else:
            self.log.event("final_submission", outcome="nothing to submit")
            return
        name = Path(str(pick["method_file"]).split(".py:")[0]).stem
        name = Path(str(pick["method_file"])).parent.name if name == "method" else name
        r = self.toolbox.call("submit", {"method_file": pick["method_file"], "predictions_file": pick["predictions_file"],
                                         "method_name": name, "note": f"auto-submitted at stop ({self.stop_reason})"})
        self.auto_submission = {"method_file": pick["method_file"], "predictions_file": pick["predictions_file"],
                                "ok": not r.is_error, "result": r.content}
        self.log.event("final_submission", outcome="submitted" if not r.is_error else "failed", **self.auto_submission)

    def summary(self) -> RunSummary:
        ctx = self.toolbox.ctx
        a = self.acct
        return RunSummary({
            "name": self.cfg.name, "backend": self.s.backend, "model": self.s.model, "base_url": self.s.base_url,
            "stop_reason": self.stop_reason, "stop_detail": self.stop_detail, "llm_calls": self.calls,
            "tokens": {**asdict(self.usage), "total": self.usage.total}, "usd": round(self.usd, 6),
            "price_source": self.price_source, "wall_seconds": round(self.elapsed(), 3),
            "experiments": a.experiments, "grader_queries": a.grader_queries, "submissions_total": a.submissions,
            "evaluations": ctx.evaluations, "submissions": ctx.submissions, "posts": ctx.posts,
            "auto_submission": self.auto_submission, "best_dev_pgr": a.best_dev_pgr, "final": a.final,
            "compactions": self.compactions, "retries": self.retries, "tool_errors": self.tool_errors,
            "final_summary": self.finished_summary, "transcript": str(self.cfg.transcript),
            "notebook": str(self.s.notebook), "workspace": str(self.toolbox.ctx.workspace),
            "budgets": asdict(self.b),
        })


def run_llm_researcher(config: ResearcherConfig) -> RunSummary:
    """Run one LLM researcher until it finishes or a budget stops it; return its summary
    (a dict; ``int()`` of it is the exit code: 0 done, 1 crashed / API failure)."""
    s = Settings.from_config(config)
    config.workspace.mkdir(parents=True, exist_ok=True)
    client = GraderClient(config.grader_url, config.token) if config.grader_url else None
    ctx = ToolContext.for_researcher(config, client, Usage.load(config))
    transcript = Transcript(config.transcript, config.name)
    agent: Agent | None = None
    try:
        agent = Agent(config, s, ADAPTERS[s.backend](s), Toolbox(ctx), transcript)
        left = agent.wall_left()
        if left is not None:  # the tools' sandboxes stop at the same hard end
            ctx.deadline = time.monotonic() + left
        transcript.event("config", name=config.name, backend=s.backend, model=s.model, base_url=s.base_url,
                         testbed=config.testbed, workspace=str(ctx.workspace), sandbox=config.sandbox,
                         context_window=s.context_window, compact_at=s.compact_at, price=asdict(agent.price),
                         price_source=agent.price_source, seeds=ctx.kit_seeds() if ctx.kit_dir else None,
                         budgets=asdict(config.budgets), gpus=config.gpus)
        try:
            agent.run()
        except Exception as e:  # noqa: BLE001 - recorded; the launcher gets a summary and restarts us
            import traceback

            agent._stop("crashed", f"{type(e).__name__}: {e}")
            transcript.event("crash", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        try:
            agent.final_submission()
        except Exception as e:  # noqa: BLE001
            transcript.event("final_submission", outcome="failed", error=f"{type(e).__name__}: {e}")
        ctx.usage.status = "done" if agent.stop_reason not in ("crashed", "api_error") else ctx.usage.status
        ctx.usage.save()
        return agent.summary()
    finally:
        transcript.close()
        if client is not None:
            client.close()
