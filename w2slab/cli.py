"""The ``w2slab`` command line."""

from __future__ import annotations

import json
import math
import sys
import time
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import numpy as np
import typer
from rich import box
from rich.console import Console
from rich.table import Table

from w2slab.cliutil import parse_seeds
from w2slab.grader.cli import app as grader_app
from w2slab.integrity.cli import app as integrity_app
from w2slab.researchers.cli import app as research_app

__all__ = ["app", "main", "parse_seeds"]

app = typer.Typer(
    help="w2slab: automated weak-to-strong alignment research.", no_args_is_help=True, add_completion=False
)
console = Console()
err = Console(stderr=True)


def _flags_show_no_type() -> None:
    """typer's help shows a ``<bool>`` type beside on/off flags (``--quiet <bool>``), which reads as
    if they took a value: show none for flags (every command of ``w2slab`` is built on typer's option)."""
    show = typer.core.TyperOption.display_type_rich

    def display_type_rich(self: Any, ctx: Any) -> str | None:
        return None if getattr(self, "is_flag", False) else show(self, ctx)

    typer.core.TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_flags_show_no_type()

DEFAULT_SEEDS = "1,2,3,4,5"
SeedsOpt = Annotated[str, typer.Option("--seeds", help="Seeds as a list or range: '1,2,3' or '1-5'.")]
TestbedOpt = Annotated[str, typer.Option("--testbed", "-t", help="A built-in testbed name (see `w2slab testbeds`) or a folder in the reference format.")]
WeakOpt = Annotated[Optional[str], typer.Option("--weak", help="Weak-model overrides, e.g. 'model=glove-50,epochs=20' or 'lm:model=Qwen/Qwen1.5-0.5B-Chat'.")]
StrongOpt = Annotated[Optional[str], typer.Option("--strong", help="Strong-model overrides, e.g. 'model=minilm-l6' or 'lm:model=/models/qwen3-4b'.")]
ExecutorOpt = Annotated[str, typer.Option("--executor", help="'local' (process pool) or 'ray' (Ray tasks; set W2SLAB_RAY_ADDRESS to join a cluster).")]
WorkersOpt = Annotated[Optional[int], typer.Option("--workers", min=1, help="Parallel local workers (default: one per GPU, else one per core).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn user mistakes into one-line errors (exit code 2) instead of tracebacks."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from w2slab.methods import MethodError
        from w2slab.testbeds.format import TestbedError

        try:
            return fn(*args, **kwargs)
        except (TestbedError, MethodError, ValueError, FileNotFoundError, RuntimeError) as e:
            err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper


def check_executor(name: str) -> str:
    if name not in ("local", "ray"):
        raise ValueError(f"unknown executor '{name}' (known: local, ray)")
    return name


def _fmt(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


@app.command()
@user_errors
def testbeds() -> None:
    """List the built-in testbeds: sizes, models, measured weak/ceiling gaps and the smallest PGR
    difference their sealed holdout can detect."""
    from w2slab.engine.pipeline import Experiment
    from w2slab.engine.runner import cached_baselines
    from w2slab.testbeds import REGISTRY, load_testbed

    # Fits 80 columns without cutting names: one space between columns, models on two lines.
    table = Table(box=box.SIMPLE_HEAD, padding=0, show_edge=False, caption_justify="left")
    table.add_column("name", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("sizes", no_wrap=True)
    table.add_column("weak model\nstrong model", min_width=13)
    for col in ("weak", "ceil.", "gap", "MDE\nsealed"):
        table.add_column(col, justify="right", no_wrap=True)
    assumed = False
    for name in sorted(REGISTRY):
        data = load_testbed(name)
        exp = Experiment.create(name)
        base = cached_baselines(exp, [1, 2, 3, 4, 5])
        w, c, d = testbed_baseline_stats(base, data.meta)
        assumed |= d is None and w is not None
        mde = sealed_mde(len(data.test), d, w, c)
        table.add_row(
            name,
            data.kind,
            f"{len(data.train_label)}/{len(data.train_unlabel)}/{len(data.test)}",
            f"{exp.weak.model} {exp.weak.head}\n{exp.strong.model} {exp.strong.head}",
            _fmt(w),
            _fmt(c),
            _fmt(c - w) if w is not None and c is not None else "-",
            _fmt(mde, 2) + ("*" if d is None and mde is not None else ""),
        )
    table.caption = (
        "sizes: train_label/train_unlabel/test rows. "
        "weak / ceil.: mean test accuracy over seeds 1-5 (`w2slab baselines -t NAME` computes them). "
        "MDE (sealed): the smallest PGR difference between two methods that a paired two-sided 5% test "
        "detects with 80% power on the sealed third of the test set, for methods disagreeing on as many "
        "rows as weak and ceiling do" + ("; * no cached predictions: assumes they disagree on 30% of rows." if assumed else ".")
    )
    console.print(table)


def testbed_baseline_stats(base: Any, meta: dict[str, Any]) -> tuple[float | None, float | None, float | None]:
    """(weak acc, ceiling acc, weak/ceiling disagreement) from cached baselines, else the weak and
    ceiling accuracies recorded in the testbed's meta.json (``"measured": {"weak": .., "ceiling": ..}``)
    with no disagreement; Nones where unknown."""
    if base is not None:
        return float(np.mean(base.weak_acc)), float(np.mean(base.ceiling_acc)), base.disagreement()
    measured = meta.get("measured") if isinstance(meta, dict) else None
    if isinstance(measured, dict) and isinstance(measured.get("weak"), (int, float)) and isinstance(measured.get("ceiling"), (int, float)):
        return float(measured["weak"]), float(measured["ceiling"]), None
    return None, None, None


def sealed_mde(n_test: int, disagreement: float | None, weak: float | None, ceiling: float | None) -> float | None:
    """Minimum detectable PGR difference on the sealed holdout (the last third of the test rows);
    disagreement defaults to 0.3. None if the gap is unknown, NaN if it is not positive."""
    from w2slab.engine.stats import min_detectable_effect

    if weak is None or ceiling is None:
        return None
    n_sealed = n_test - 2 * (n_test // 3)
    return min_detectable_effect(n_sealed, 0.3 if disagreement is None else disagreement, ceiling - weak)


@app.command()
@user_errors
def methods() -> None:
    """List the built-in methods and their parameters."""
    from w2slab.methods import list_methods, method_params

    table = Table(title="built-in methods")
    table.add_column("name")
    table.add_column("parameters")
    table.add_column("what it does")
    for name, fn in list_methods().items():
        params = ", ".join(f"{k}={v}" for k, v in method_params(fn).items())
        table.add_row(name, params, " ".join((fn.__doc__ or "").strip().split("\n\n")[0].split()))
    console.print(table)


@app.command()
@user_errors
def baselines(
    testbed: TestbedOpt,
    seeds: SeedsOpt = DEFAULT_SEEDS,
    weak: WeakOpt = None,
    strong: StrongOpt = None,
    executor: ExecutorOpt = "local",
    workers: WorkersOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Compute (or load from cache) the weak teacher and the ceiling on every seed."""
    from w2slab.engine.pipeline import Experiment
    from w2slab.engine.runner import compute_baselines
    from w2slab.testbeds import load_testbed

    check_executor(executor)
    exp = Experiment.create(testbed, weak, strong)
    start = time.perf_counter()
    base = compute_baselines(exp, parse_seeds(seeds), executor, workers, quiet)
    table = Table(title=f"baselines: {exp.testbed}")
    for col in ("seed", "weak acc", "ceiling acc"):
        table.add_column(col, justify="right")
    for s, w, c in zip(base.seeds, base.weak_acc, base.ceiling_acc):
        table.add_row(str(s), _fmt(w), _fmt(c))
    table.add_row("mean", _fmt(sum(base.weak_acc) / len(base.seeds)), _fmt(sum(base.ceiling_acc) / len(base.seeds)))
    console.print(table)
    n_test = len(load_testbed(exp.testbed).test)
    weak_lo = 0.0
    for role, cfg, accs in (("weak", exp.weak, base.weak_acc), ("strong", exp.strong, base.ceiling_acc)):
        mean, lo, hi = accuracy_interval(accs, n_test)
        weak_lo = lo if role == "weak" else weak_lo
        console.print(f"{role} model: {describe_model(cfg)}; test accuracy {mean:.3f}, 95% interval [{lo:.3f}, {hi:.3f}] "
                      f"({n_test} test rows, {len(accs)} seed(s))", highlight=False, soft_wrap=True)
    console.print(f"gap (ceiling - weak): {base.gap:.3f}   ({time.perf_counter() - start:.1f} s)")
    if weak_lo <= 0.5:
        err.print("[yellow]warning:[/] the weak model is at chance here (its interval includes 0.5): there is no weak "
                  "signal to transfer, so PGR says nothing; choose a weak model that can learn this testbed (--weak, or "
                  "\"weak\" in the folder's meta.json)", highlight=False, soft_wrap=True)
    if base.gap <= 0:
        err.print("[yellow]warning:[/] the ceiling does not beat the weak model: PGR is undefined here")


def describe_model(cfg: Any) -> str:
    """A backend config as the ``--weak`` / ``--strong`` syntax: the fields that set the model."""
    parts = [f"model={cfg.model}"] + ([f"head={cfg.head}"] if cfg.kind == "probe" else []) + [f"epochs={cfg.epochs}"]
    parts += [f"n_train={cfg.n_train}"] if cfg.n_train else []
    return f"{cfg.kind}:" + ",".join(parts)


def accuracy_interval(accs: list[float], n_rows: int) -> tuple[float, float, float]:
    """Mean accuracy over seeds with a 95% normal interval from test-row noise (binomial, ``n_rows``)
    plus the spread between seeds."""
    p = sum(accs) / len(accs)
    seed_var = sum((a - p) ** 2 for a in accs) / (len(accs) - 1) / len(accs) if len(accs) > 1 else 0.0
    se = math.sqrt(p * (1 - p) / max(n_rows, 1) + seed_var)
    return p, max(0.0, p - 1.96 * se), min(1.0, p + 1.96 * se)


def _parse_params(items: list[str]) -> dict[str, str]:
    params = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"bad --param '{item}': expected NAME=VALUE")
        params[key.strip()] = value.strip()
    return params


@app.command()
@user_errors
def run(
    method: Annotated[str, typer.Option("--method", "-m", help="A built-in method (see `w2slab methods`) or a file: ideas/x.py or ideas/x.py:name.")],
    testbed: TestbedOpt,
    seeds: SeedsOpt = DEFAULT_SEEDS,
    param: Annotated[list[str], typer.Option("--param", "-p", help="Method parameter NAME=VALUE (repeatable).")] = [],
    weak: WeakOpt = None,
    strong: StrongOpt = None,
    executor: ExecutorOpt = "local",
    workers: WorkersOpt = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Where to write the JSON result (default: runs/<time>-<method>-<testbed>.json).")] = None,
    quiet: QuietOpt = False,
) -> None:
    """Run a W2S method over seeds; print weak / ceiling / transfer / PGR and write JSON."""
    from w2slab.engine.pipeline import Experiment
    from w2slab.engine.runner import run_method_over_seeds, write_result
    from w2slab.methods import bind_params, get_method

    check_executor(executor)
    seed_list = parse_seeds(seeds)
    params = _parse_params(param)
    bind_params(get_method(method), params)  # fail fast on unknown methods and parameters
    exp = Experiment.create(testbed, weak, strong)
    result = run_method_over_seeds(exp, method, seed_list, params, executor, workers, quiet)
    s = result.summary
    over = "rows x seeds" if s.n_seeds > 1 else "rows, 1 seed"
    ci_label = f"{s.level:.0%} CI ({over})"
    table = Table(title=f"{method} on {exp.testbed} ({s.n_seeds} seed{'s' * (s.n_seeds != 1)}, {s.n_rows} test rows)")
    for col in ("seed", "weak", "ceiling", "transfer", "PGR", ci_label):
        table.add_column(col, justify="right")
    for row in result.per_seed:
        table.add_row(str(row["seed"]), _fmt(row["weak_acc"]), _fmt(row["ceiling_acc"]), _fmt(row["transfer_acc"]), _fmt(row["pgr"], 2), "")
    ci = f"[{_fmt(s.lo, 2)}, {_fmt(s.hi, 2)}]"
    table.add_row("all", _fmt(s.weak_acc), _fmt(s.ceiling_acc), _fmt(s.transfer_acc), _fmt(s.pgr, 2), ci, style="bold")
    console.print(table)
    console.print(
        f"PGR {_fmt(s.pgr, 3)}, {ci_label} [{_fmt(s.lo, 3)}, {_fmt(s.hi, 3)}], SE {_fmt(s.se, 3)}"
        f" (paired bootstrap over {s.n_rows} test rows{' and ' + str(s.n_seeds) + ' seeds' if s.n_seeds > 1 else ''})"
    )
    if s.note:
        err.print(f"[yellow]warning:[/] {s.note}", highlight=False)
    name = Path(method).stem if method.endswith(".py") or ".py:" in method else method
    path = out or Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}-{Path(exp.testbed).name}.json"
    console.print(f"wrote {write_result(result, path)}")


@app.command()
@user_errors
def kit(
    testbed: TestbedOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the kit to.")],
    seeds: SeedsOpt = DEFAULT_SEEDS,
    weak: WeakOpt = None,
    strong: StrongOpt = None,
) -> None:
    """Export a label-free researcher kit: visible rows, weak soft labels per seed, strong config."""
    from w2slab.engine.kit import export_kit
    from w2slab.engine.pipeline import Experiment

    path = export_kit(Experiment.create(testbed, weak, strong), parse_seeds(seeds), out)
    console.print(f"wrote kit {path}")


@app.command()
@user_errors
def predict(
    kit_dir: Annotated[Path, typer.Option("--kit", help="A researcher kit folder (from `w2slab kit`).")],
    method: Annotated[str, typer.Option("--method", "-m", help="A built-in method or a file: ideas/x.py[:name].")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the predictions JSON.")],
    seeds: Annotated[Optional[str], typer.Option("--seeds", help="Seeds (default: all the kit's seeds).")] = None,
    param: Annotated[list[str], typer.Option("--param", "-p", help="Method parameter NAME=VALUE (repeatable).")] = [],
) -> None:
    """Run a method on a kit (no labels needed) and write test predictions per seed for the grader."""
    from w2slab.engine.kit import Kit
    from w2slab.engine.kit import predict as kit_predict

    seed_list = parse_seeds(seeds) if seeds else Kit.open(kit_dir).seeds
    result = kit_predict(kit_dir, method, seed_list, _parse_params(param))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result) + "\n")
    console.print(f"wrote predictions for seeds {', '.join(map(str, seed_list))} to {out}")


@app.command()
@user_errors
def demo(
    testbed: Annotated[Optional[str], typer.Option("--testbed", "-t", help="Built-in testbed (default: tweets-pairs).")] = None,
    researchers: Annotated[int, typer.Option("--researchers", "-n", help="Offline researchers in parallel.")] = 2,
    minutes: Annotated[float, typer.Option("--minutes", help="How long the researchers work.")] = 4.0,
    workdir: Annotated[Optional[Path], typer.Option("--workdir", help="Where workspaces, transcripts and status go (default: runs/demo/<date-time>, a new folder each run).")] = None,
    serve_after: Annotated[bool, typer.Option("--serve-after", help="Keep the grader and dashboard running afterwards (Ctrl-C stops).")] = False,
    unsafe_no_sandbox: Annotated[bool, typer.Option("--unsafe-no-sandbox", help="Run experiments without bubblewrap (debugging only).")] = False,
) -> None:
    """The main job on the embedded default: a grader plus offline researchers on a built-in
    testbed, offline on CPU; ends with best PGR vs naive, experiments, findings, dashboard address."""
    from w2slab.researchers.demo import run_demo  # heavy (the launcher and its report): only for the demo

    run_demo(testbed, researchers, minutes, workdir, unsafe_no_sandbox, serve_after)


app.add_typer(grader_app)
app.add_typer(research_app)
app.add_typer(integrity_app)


def main() -> None:  # pragma: no cover
    sys.exit(app())
