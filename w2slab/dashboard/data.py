"""What the dashboard derives from stored records: experiments parsed from pushed transcripts and
the recipe inside a submitted snapshot. (Its database queries live in :mod:`w2slab.grader.queries`.)"""

from __future__ import annotations

import json
import re
import tarfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from w2slab.grader import queries


_EXPERIMENT = re.compile(r"^experiment (\d+)(?: (done|failed))?:\s*(.*)", re.S)
_DEV = re.compile(r"dev PGR (\{[^}]*\})")


def experiments(engine: Engine) -> list[dict[str, Any]]:
    """Every experiment logged in a pushed transcript: a message that carries its ``recipe``
    (``experiment N: why``), with the outcome from the matching ``experiment N done|failed``
    message (dev PGR per seed)."""
    rows = queries.experiment_lines(engine)
    out: list[dict[str, Any]] = []
    open_: dict[tuple[str, str, str], dict[str, Any]] = {}
    for run_id, name, seq, ts, line in rows:
        try:
            d = json.loads(line)
        except ValueError:
            continue
        m = _EXPERIMENT.match(str(d.get("content") or ""))
        if not m:
            continue
        key = (run_id, name, m.group(1))
        if m.group(2) is None and isinstance(d.get("recipe"), dict):
            exp = {"run_id": run_id, "researcher": name, "n": int(m.group(1)), "seq": seq, "created_at": ts or d.get("ts"),
                   "action": d.get("action") or "", "why": m.group(3).strip(), "recipe": d["recipe"],
                   "seeds": d.get("seeds") or [], "status": "running", "dev": {}, "dev_pgr": None, "result_seq": None}
            open_[key] = exp
            out.append(exp)
        elif key in open_:
            exp = open_.pop(key)
            exp["status"], exp["result_seq"] = m.group(2), seq
            if m.group(2) == "done" and (dm := _DEV.search(m.group(3))):
                try:
                    dev = json.loads(dm.group(1).replace("'", '"'))
                except ValueError:
                    dev = {}
                exp["dev"] = {str(k): v for k, v in dev.items() if isinstance(v, (int, float))}
                if exp["dev"]:
                    exp["dev_pgr"] = sum(exp["dev"].values()) / len(exp["dev"])
            elif m.group(2) == "failed":
                exp["error"] = m.group(3).strip()[:300]
    return out


@lru_cache(maxsize=4096)
def snapshot_recipe(path: Path) -> dict[str, Any] | None:
    """``recipe.json`` at the top of a stored snapshot (what offline researchers submit), if any;
    snapshots are content-addressed, so the answer per path never changes."""
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar.getmembers():
                if member.isfile() and member.name.lstrip("./") == "recipe.json" and member.size < 100_000:
                    f = tar.extractfile(member)
                    value = json.loads(f.read()) if f else None
                    return value if isinstance(value, dict) else None
    except (OSError, tarfile.TarError, ValueError):
        return None
    return None
