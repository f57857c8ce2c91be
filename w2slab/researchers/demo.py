"""``w2slab demo``: a grader and offline researchers on a built-in testbed, a few minutes on CPU."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console

from w2slab.researchers.launcher import run_research
from w2slab.researchers.options import DEFAULT_TESTBED, ResearchOptions
from w2slab.researchers.sandbox import find_bwrap


def run_demo(testbed: str | None = None, researchers: int = 2, minutes: float = 4.0, workdir: str | Path | None = None,
             unsafe_no_sandbox: bool = False, serve_after: bool = False, quiet: bool = False) -> dict[str, Any]:
    """``w2slab demo``: offline researchers on the default built-in testbed, a few minutes on CPU.

    Uses ``tweets-pairs`` (else the first built-in testbed) unless ``testbed`` is given; starts a
    grader, runs ``researchers`` offline researchers for ``minutes`` and prints the summary.
    Falls back to no sandbox (with a warning) when bubblewrap cannot run here.
    """
    from w2slab.testbeds import REGISTRY  # heavy (the testbed registry): only when the demo runs

    console = Console(stderr=True, quiet=quiet)
    if testbed is None:
        builtin = sorted(n for n, s in REGISTRY.items() if "builtin" in s.tags)
        if not builtin:
            raise RuntimeError("no built-in testbed is installed (build them with `python -m w2slab.testbeds.build`)")
        testbed = DEFAULT_TESTBED if DEFAULT_TESTBED in builtin else builtin[0]
    if not unsafe_no_sandbox:
        if find_bwrap() is None:
            console.print("[yellow]warning:[/] bubblewrap cannot run here: the demo runs experiments WITHOUT a sandbox")
            unsafe_no_sandbox = True
    workdir = Path(workdir) if workdir else Path("runs") / "demo" / time.strftime("%Y%m%d-%H%M%S")
    opts = ResearchOptions(testbed=testbed, researchers=researchers, backend="offline", hours=minutes / 60,
                           workdir=workdir, unsafe_no_sandbox=unsafe_no_sandbox, serve_after=serve_after, quiet=quiet)
    console.print(f"[bold]w2slab demo[/]: {researchers} offline researchers on {testbed} for {minutes:g} min "
                  f"(workdir {opts.workdir})", highlight=False)
    return run_research(opts, console)
