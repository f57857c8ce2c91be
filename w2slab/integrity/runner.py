"""Runs inside the audit sandbox: a submission's method on one or more label-free kits.

``python -m w2slab.integrity.runner SPEC.json`` where SPEC holds ``method`` (a path, or
``path.py:name``), ``jobs`` (``[{"name", "kit", "seeds"}]``), ``out`` (where to write the
results) and ``watch`` (path prefixes whose access is recorded). Before the method is imported a
Python audit hook (PEP 578, which code cannot remove) records: opening or listing anything under
a watched prefix, opening for reading a path that does not exist outside the system folders
(probing for label files that the sandbox does not have), network calls and new processes.
The results are claims made by untrusted code; the auditor treats them as such (labels are
never in the sandbox, so nothing the code writes can carry them)."""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

MAX_EVENTS = 200
_SYSTEM = ("/usr/", "/lib", "/bin/", "/sbin/", "/etc/", "/proc/", "/sys/", "/dev/", "/tmp/", "/run/")


def install_hook(watch: list[str], allowed: list[str]) -> list[dict]:
    events: list[dict] = []
    seen: set[tuple[str, str]] = set()
    busy = [False]
    watch = [w.rstrip("/") for w in watch]
    allowed = [a.rstrip("/") for a in allowed]

    def under(p: str, roots: list[str]) -> bool:
        return any(p == r or p.startswith(r + "/") for r in roots)

    def note(kind: str, detail: str) -> None:
        if (kind, detail) in seen or len(events) >= MAX_EVENTS:
            return
        seen.add((kind, detail))
        events.append({"kind": kind, "detail": detail[:300], "t": round(time.time(), 3)})

    def hook(event: str, args: tuple) -> None:
        if busy[0]:
            return
        busy[0] = True
        try:
            if event == "open" or event in ("os.listdir", "os.scandir"):
                path = args[0] if args else None
                if path is None or isinstance(path, int):
                    return
                p = os.path.abspath(os.fsdecode(path))
                if under(p, watch):
                    note("watched-path", f"{event} {p}")
                elif event == "open":
                    mode = args[1] if len(args) > 1 else "r"
                    reading = mode is None or (isinstance(mode, str) and not any(c in mode for c in "wax+"))
                    if reading and not os.path.exists(p) and not p.startswith(_SYSTEM) and not under(p, allowed):
                        note("missing-path", p)
            elif event in ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "socket.sendto", "urllib.Request"):
                note("network", f"{event} {args[1] if event == 'socket.connect' and len(args) > 1 else args[0] if args else ''}")
            elif event in ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "pty.spawn"):
                note("process", f"{event} {args[:2]!s}")
        except Exception:
            pass
        finally:
            busy[0] = False

    sys.addaudithook(hook)
    return events


def main(spec_path: str) -> int:
    spec = json.loads(open(spec_path).read())
    out_path = spec["out"]
    # our own imports first: importing the testbed registry lists its (masked) data folder
    from w2slab.engine.kit import predict

    events = install_hook(spec.get("watch", []), spec.get("allowed", []))
    result: dict = {"jobs": {}, "events": events}

    def save() -> None:
        tmp = out_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f)
        os.replace(tmp, out_path)

    method_dir = os.path.dirname(spec["method"].split(".py:")[0])
    sys.path.insert(0, method_dir)
    for job in spec["jobs"]:
        start = time.time()
        try:
            out = predict(job["kit"], spec["method"], job["seeds"])
            notes = json.dumps(out.get("notes", {}), default=str)
            result["jobs"][job["name"]] = {"predictions": out["predictions"], "seconds": round(time.time() - start, 2),
                                           "notes": notes[:20_000]}
        except BaseException as e:
            if isinstance(e, KeyboardInterrupt):
                raise
            tb = traceback.format_exc()
            result["jobs"][job["name"]] = {"error": f"{type(e).__name__}: {e}"[:4000], "traceback": tb[-4000:],
                                           "seconds": round(time.time() - start, 2)}
        save()
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
