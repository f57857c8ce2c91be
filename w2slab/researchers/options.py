"""What ``w2slab research`` takes (:class:`ResearchOptions`), and what a resumed run keeps of
the options it was started with (``<workdir>/session.json``)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

DEFAULT_TESTBED = "tweets-pairs"
DEFAULT_MODELS = {"anthropic": "claude-sonnet-4-5", "openai": "gpt-4.1"}
DEFAULT_KEY_ENV = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}
RESUME_TAKES = ("hours", "grader", "admin_token", "grader_host", "ray_address", "serve_after", "quiet", "workdir")


@dataclass
class ResearchOptions:
    """What ``w2slab research`` takes. Budgets: ``budget_usd`` is the total over all
    researchers (each gets an equal share); ``max_experiments`` and ``max_grader_queries``
    are per researcher; ``hours`` is the run's wall-clock once the researchers start (of a
    resumed run: of the resumed part). ``gpus_per_researcher``: disjoint GPUs for each (from
    ``gpus``, else every GPU found). ``ray_address``: run researchers as Ray actors there
    (``auto``: the running cluster). ``grader_host``: where the started grader listens."""

    testbed: str = DEFAULT_TESTBED
    researchers: int = 2
    backend: str = "offline"
    hours: float = 0.1
    budget_usd: float | None = None
    max_experiments: int | None = None
    max_grader_queries: int | None = None
    max_tokens: int | None = None
    grader: str | None = None
    admin_token: str | None = None
    directions: Path | None = None
    unsafe_no_sandbox: bool = False
    workdir: Path = Path("runs/research")
    weak: str | None = None
    strong: str | None = None
    dev_seeds: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    max_restarts: int = 2
    grace_seconds: float = 120.0
    eval_per_hour: int = 240
    eval_total: int = 2000
    dev_ladder: float | None = None  # the started grader's Ladder margin (None: its default; 0: off)
    audit_wait_seconds: float = 600.0  # the summary waits this long for submission audits
    baseline_submit: bool = True
    serve_after: bool = False
    threads: int = 1
    quiet: bool = False
    gpus_per_researcher: int = 0
    gpus: list[int] | None = None
    ray_address: str | None = None
    grader_host: str = "127.0.0.1"
    resume: bool = False

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("admin_token")  # never written: it lives in the grader's token file or the environment
        return {k: str(v) if isinstance(v, Path) else v for k, v in d.items()}


def resume_options(given: ResearchOptions) -> ResearchOptions:
    """The options of the run in ``given.workdir`` (its session.json), with what a resume may change."""
    path = Path(given.workdir) / "session.json"
    try:
        saved = json.loads(path.read_text())["options"]
    except (OSError, ValueError, KeyError):
        raise ValueError(f"--resume: {given.workdir} is not a research run folder (no readable session.json)") from None
    known = {f.name for f in fields(ResearchOptions)}
    opts = ResearchOptions(**{k: v for k, v in saved.items() if k in known})
    for k in RESUME_TAKES:
        setattr(opts, k, getattr(given, k))
    opts.directions = Path(opts.directions) if opts.directions else None
    opts.resume = True
    return opts
