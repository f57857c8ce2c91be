"""``w2slab research``: run automated researchers against a grader (a typer app to mount).

    w2slab research --testbed tweets-pairs --researchers 2 --backend offline --hours 0.1
    w2slab research --gpus-per-researcher 1 --strong 'lm:model=...'   (disjoint GPUs per researcher)
    w2slab research --resume runs/research --hours 1                    (continue a stopped or killed run)
    w2slab research status [--workdir DIR]
    w2slab research stop [--workdir DIR] [--now]

Mount with ``app.add_typer(w2slab.researchers.cli.app)`` (it holds the ``research`` group).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from w2slab.cliutil import parse_seeds
from w2slab.researchers.runfolder import read_status, request_stop

app = typer.Typer(help="Automated researchers.", no_args_is_help=True, add_completion=False)
research_app = typer.Typer(help="Run automated W2S researchers against a grader; `research status`, `research stop`.")
app.add_typer(research_app, name="research")
console = Console()
err = Console(stderr=True)

WorkdirOpt = Annotated[Path, typer.Option("--workdir", help="Folder of the research run (status.json, workspaces, transcripts).")]
DEFAULT_WORKDIR = Path("runs/research")


def _fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


@research_app.callback(invoke_without_command=True)
def research(
    ctx: typer.Context,
    testbed: Annotated[str, typer.Option("--testbed", "-t", help="Built-in testbed name, a folder, or NAME=FOLDER.")] = "tweets-pairs",
    researchers: Annotated[int, typer.Option("--researchers", "-n", help="How many researchers run in parallel.")] = 2,
    backend: Annotated[str, typer.Option("--backend", help="offline (no LLM), anthropic or openai.")] = "offline",
    hours: Annotated[float, typer.Option("--hours", help="Wall-clock of the run once researchers start.")] = 0.1,
    budget_usd: Annotated[Optional[float], typer.Option("--budget-usd", help="Total LLM dollars over all researchers.")] = None,
    max_experiments: Annotated[Optional[int], typer.Option("--max-experiments", help="Experiments per researcher.")] = None,
    max_grader_queries: Annotated[Optional[int], typer.Option("--max-grader-queries", help="Dev evaluations per researcher.")] = None,
    max_tokens: Annotated[Optional[int], typer.Option("--max-tokens", help="LLM tokens per researcher.")] = None,
    grader: Annotated[Optional[str], typer.Option("--grader", help="URL of a running grader (else one is started on loopback).")] = None,
    admin_token: Annotated[Optional[str], typer.Option("--admin-token", help="Admin token of --grader (default: W2SLAB_ADMIN_TOKEN or the token file).")] = None,
    directions: Annotated[Optional[Path], typer.Option("--directions", help="Starting directions: one per paragraph, or a JSON list.")] = None,
    unsafe_no_sandbox: Annotated[bool, typer.Option("--unsafe-no-sandbox", help="Run experiments WITHOUT isolation (debugging only).")] = False,
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    weak: Annotated[Optional[str], typer.Option("--weak", help="Weak-model overrides (as for `w2slab serve`).")] = None,
    strong: Annotated[Optional[str], typer.Option("--strong", help="Strong-model overrides (as for `w2slab serve`).")] = None,
    seeds: Annotated[str, typer.Option("--seeds", help="Dev/baseline seeds: '1-5' or '1,2,3'.")] = "1-5",
    model: Annotated[Optional[str], typer.Option("--model", help="LLM model for the anthropic/openai backends.")] = None,
    base_url: Annotated[Optional[str], typer.Option("--base-url", help="LLM API base URL (OpenAI-compatible servers).")] = None,
    api_key_env: Annotated[Optional[str], typer.Option("--api-key-env", help="Name of the env variable holding the API key.")] = None,
    max_restarts: Annotated[int, typer.Option("--max-restarts", help="Restarts of a crashed researcher.")] = 2,
    grace: Annotated[float, typer.Option("--grace", help="Seconds researchers get to submit after a stop or the deadline.")] = 120.0,
    eval_per_hour: Annotated[int, typer.Option("--eval-per-hour", help="Per-researcher hourly evaluations (grader started here).")] = 240,
    dev_ladder: Annotated[Optional[float], typer.Option("--dev-ladder", help="Ladder margin of the grader started here (default: its default, one dev sampling error; 0: off).")] = None,
    no_baseline: Annotated[bool, typer.Option("--no-baseline", help="Do not submit the naive reference to the leaderboard.")] = False,
    serve_after: Annotated[bool, typer.Option("--serve-after", help="Keep the grader (and dashboard) up after the run, until Ctrl-C.")] = False,
    gpus_per_researcher: Annotated[int, typer.Option("--gpus-per-researcher", min=0, help="Disjoint GPUs for each researcher's experiments (0: none).")] = 0,
    gpus: Annotated[Optional[str], typer.Option("--gpus", help="GPUs to share out: '0,1,2,3' or '0-3' (default: every GPU found).")] = None,
    ray: Annotated[Optional[str], typer.Option("--ray", metavar="ADDRESS", help="Run researchers as Ray actors on this cluster ('auto': the running one).")] = None,
    grader_host: Annotated[str, typer.Option("--grader-host", help="Address the started grader listens on (0.0.0.0: reachable from other nodes).")] = "127.0.0.1",
    resume: Annotated[Optional[Path], typer.Option("--resume", metavar="WORKDIR", help="Continue the stopped or killed run in WORKDIR (its options; --hours for the resumed part).")] = None,
) -> None:
    """Start or connect to a grader, run N researchers in parallel, and summarise."""
    if ctx.invoked_subcommand is not None:
        return
    # heavy (the launcher pulls in the report, the models' testbeds): only when a run starts
    from w2slab.researchers.gpus import parse_gpu_list
    from w2slab.researchers.launcher import run_research
    from w2slab.researchers.options import ResearchOptions
    from w2slab.researchers.sandbox import SandboxUnavailable
    from w2slab.testbeds.format import TestbedError

    try:
        opts = ResearchOptions(
            testbed=testbed, researchers=researchers, backend=backend, hours=hours, budget_usd=budget_usd,
            max_experiments=max_experiments, max_grader_queries=max_grader_queries, max_tokens=max_tokens, grader=grader,
            admin_token=admin_token, directions=directions, unsafe_no_sandbox=unsafe_no_sandbox, workdir=workdir, weak=weak,
            strong=strong, dev_seeds=parse_seeds(seeds), model=model, base_url=base_url, api_key_env=api_key_env,
            max_restarts=max_restarts, grace_seconds=grace, eval_per_hour=eval_per_hour, dev_ladder=dev_ladder, baseline_submit=not no_baseline,
            serve_after=serve_after, gpus_per_researcher=gpus_per_researcher,
            gpus=parse_gpu_list(gpus) if gpus else None, ray_address=ray, grader_host=grader_host,
            resume=resume is not None,
        )
        if resume is not None:
            opts.workdir = resume
        run_research(opts)
    except (ValueError, TestbedError, RuntimeError, FileNotFoundError, SandboxUnavailable) as e:
        _fail(str(e))


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def status_table(st: dict[str, Any]) -> Table:
    age = time.time() - st.get("updated", time.time())
    table = Table(title=f"research {st.get('state')} on {st.get('testbed')} ({st.get('elapsed_seconds', 0):.0f} s; "
                        f"updated {age:.0f} s ago) - {st.get('dashboard')}")
    cols = ("researcher", "direction", "status", "restarts", "experiments", "grader queries", "findings", "tokens in/out",
            "$", "wall s", "best dev PGR", "final PGR", "stop reason")
    for c in cols:
        table.add_column(c, overflow="fold")
    for r in st.get("researchers", []):
        final = r.get("final") or {}
        table.add_row(r["name"], r.get("direction", ""), r.get("outcome") or r.get("status", ""), str(r.get("restarts", 0)),
                      str(r.get("experiments", 0)), str(r.get("grader_queries", 0)), str(r.get("findings_posted", 0)),
                      f"{r.get('tokens_in', 0)}/{r.get('tokens_out', 0)}", f"{float(r.get('usd') or 0):.2f}",
                      f"{float(r.get('wall_seconds') or 0):.0f}", _fmt(r.get("best_dev_pgr")), _fmt(final.get("pgr")),
                      r.get("stop_reason") or "")
    t = st.get("total", {})
    table.add_row("total", "", "", "", str(t.get("experiments", 0)), str(t.get("grader_queries", 0)),
                  str(t.get("findings_posted", 0)), f"{t.get('tokens_in', 0)}/{t.get('tokens_out', 0)}",
                  f"{float(t.get('usd') or 0):.2f}", f"{float(t.get('wall_seconds') or 0):.0f}", "", "", "", style="bold")
    return table


@research_app.command("status")
def status(workdir: WorkdirOpt = DEFAULT_WORKDIR,
           as_json: Annotated[bool, typer.Option("--json", help="Print status.json as is.")] = False) -> None:
    """Accounting per researcher and in total (from <workdir>/status.json)."""
    try:
        st = read_status(workdir)
    except FileNotFoundError as e:
        _fail(str(e))
        return
    if as_json:
        print(json.dumps(st, indent=1))
        return
    out = console if console.is_terminal else Console(width=220)  # pipes and logs: no folded columns
    if st.get("sandboxed") is False:
        out.print("[bold white on red] UNSANDBOXED RUN [/] experiments run without isolation (--unsafe-no-sandbox)")
    out.print(status_table(st))
    s = st.get("summary")
    if s:
        best, naive = s.get("best") or {}, s.get("naive") or {}
        console.print(f"best sealed PGR {_fmt(best.get('pgr'))} ({best.get('researcher', '-')}) vs naive {_fmt(naive.get('pgr'))}; "
                      f"{s.get('findings_posted')} findings posted", highlight=False)


@research_app.command("stop")
def stop(workdir: WorkdirOpt = DEFAULT_WORKDIR,
         now: Annotated[bool, typer.Option("--now", help="Also interrupt the launcher: terminate researchers without waiting.")] = False) -> None:
    """Ask a running research session to wrap up: researchers submit their best and stop."""
    try:
        console.print(request_stop(workdir, now), highlight=False, soft_wrap=True)
    except FileNotFoundError as e:
        _fail(str(e))


if __name__ == "__main__":
    app()
