"""Research-integrity commands (a typer app to mount into ``w2slab``): ``redteam`` and ``flags``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Research integrity: red-team the grader, list integrity flags.", no_args_is_help=True,
                  add_completion=False)
console = Console(width=None if Console().is_terminal else 200)


@app.command()
def redteam(
    rows: Annotated[int, typer.Option("--rows", min=40, max=100_000, help="Test rows of the toy testbed under attack.")] = 400,
    budget: Annotated[int, typer.Option("--budget", min=1, help="Evaluations of the single-flip attacker.")] = 250,
    coord_budget: Annotated[int, typer.Option("--coord-budget", min=1, help="Evaluations of each coordinated attacker.")] = 100,
    unhardened: Annotated[bool, typer.Option("--unhardened", help="Switch the defences off (noise, reuse, near-duplicate "
                                                                  "refusal, audits) to see what they stop.")] = False,
    no_ladder: Annotated[bool, typer.Option("--no-ladder", help="Switch only the Ladder off (noise, reuse and the rest stay on), "
                                                                "to see what it stops.")] = False,
    no_submission_hardening: Annotated[bool, typer.Option("--no-submission-hardening", help="Switch only the submission "
        "defences off (the board Ladder: exact board scores; the near-duplicate check on scored rows only), to see what they stop.")] = False,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed of the toy data and the attackers (default: random).")] = None,
    workdir: Annotated[Optional[Path], typer.Option("--workdir", help="Keep the server's files here (default: a temporary folder).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Scripted adversarial researchers against a real grader on a small secret testbed: what each
    attack recovered (labels beyond chance, one-sided binomial p vs 0.5) and whether it was caught.
    Exit status 1 when any attack recovers labels (p < 0.01) or goes uncaught."""
    from w2slab.integrity.redteam import RedTeam, summary_ok, table_rows

    start = time.perf_counter()
    if workdir:
        workdir.mkdir(parents=True, exist_ok=True)
    with RedTeam(workdir, test_rows=rows, eval_budget=budget, coord_budget=coord_budget, unhardened=unhardened, seed=seed,
                 ladder=not no_ladder, board_ladder=not no_submission_hardening,
                 dup_rows="board" if no_submission_hardening else "all", quiet=as_json) as rt:
        results = rt.run()
    if as_json:
        print(json.dumps({"seed": rt.seed, "unhardened": unhardened, "ladder": not (no_ladder or unhardened), "ok": summary_ok(results),
                          "results": [r.to_dict() for r in results]}, indent=1))
    else:
        mode = "UNHARDENED" if unhardened else ("hardened, NO LADDER" if no_ladder else
                                                "hardened, NO SUBMISSION DEFENCES" if no_submission_hardening else "hardened")
        table = Table(title=f"red team ({mode} grader, {rows} test rows, seed {rt.seed})")
        for c in ("attack", "researcher(s)", "queries", "recovered (correct/guessed)", "p (binomial vs 0.5)", "caught", ""):
            table.add_column(c, overflow="fold")
        for row in table_rows(results):
            table.add_row(*row)
        console.print(table)
        verdict = "every attack caught, nothing recovered beyond chance" if summary_ok(results) else "SOME ATTACKS SUCCEEDED"
        console.print(f"{verdict} ({time.perf_counter() - start:.0f} s)", highlight=False)
    if not summary_ok(results):
        raise typer.Exit(1)


@app.command()
def flags(
    db: Annotated[Optional[str], typer.Option("--db", help="Grader database URL (default: SQLite under W2SLAB_HOME/grader).")] = None,
    researcher: Annotated[Optional[str], typer.Option("--researcher", "-r")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Research-integrity flags: submission audits, refused requests and probe detection."""
    from w2slab.grader.cli import _engine, _print_flags
    from w2slab.integrity.probes import all_flags

    rows = all_flags(_engine(db), researcher=researcher)
    if as_json:
        print(json.dumps(rows, indent=1))
        return
    _print_flags(rows)


if __name__ == "__main__":
    sys.exit(app())
