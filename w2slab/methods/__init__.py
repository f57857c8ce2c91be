"""W2S methods ("ideas") as plug-ins with one contract.

A method is a function ``fn(ctx: MethodContext, **params) -> np.ndarray`` returning the
student's test probabilities ``(N_test, 2)``. Its keyword parameters (with defaults)
are its config. Register it with ``@method("name")``; a researcher's file is loaded
by path (``ideas/my_idea.py`` or ``ideas/my_idea.py:name``).
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any

from w2slab.methods.core import REGISTRY, MethodContext, MethodError, MethodFn, method

__all__ = ["REGISTRY", "MethodContext", "MethodError", "MethodFn", "bind_params", "get_method", "list_methods", "method",
           "method_params"]

def _load_file(path: Path, name: str | None) -> MethodFn:
    if not path.is_file():
        raise MethodError(f"method file not found: {path}")
    before = set(REGISTRY)
    module_name = f"w2slab_user_method_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # the researcher's code: report, don't crash
        raise MethodError(f"{path}: failed to import: {type(e).__name__}: {e}") from e
    found = {n: f for n, f in REGISTRY.items() if getattr(f, "__module__", "") == module_name}
    for n in set(REGISTRY) - before - set(found):
        found[n] = REGISTRY[n]
    if name:
        if name not in found:
            raise MethodError(f"{path}: no method named '{name}' (found: {', '.join(found) or 'none'})")
        return found[name]
    if len(found) == 1:
        return next(iter(found.values()))
    if not found and callable(getattr(module, "run", None)):
        return module.run
    raise MethodError(
        f"{path}: expected exactly one @method or a run(ctx) function, found {', '.join(found) or 'none'}"
        " (pick one with FILE.py:NAME)"
    )


def get_method(ref: str) -> MethodFn:
    """A registered name, or ``path/to/file.py[:name]``."""
    _load_builtins()
    if ref in REGISTRY:
        return REGISTRY[ref]
    path_part, _, name = ref.partition(".py:")
    if ref.endswith(".py") or name:
        return _load_file(Path(f"{path_part}.py" if name else ref), name or None)
    raise MethodError(f"unknown method '{ref}' (built in: {', '.join(sorted(REGISTRY))}; or a path to a .py file)")


def method_params(fn: MethodFn) -> dict[str, Any]:
    """The method's parameters and their defaults."""
    sig = inspect.signature(fn)
    return {n: p.default for n, p in list(sig.parameters.items())[1:] if p.default is not inspect.Parameter.empty}


def bind_params(fn: MethodFn, overrides: dict[str, Any]) -> dict[str, Any]:
    """Defaults merged with overrides, coerced to the defaults' types; unknown names rejected."""
    params = method_params(fn)
    for key, value in overrides.items():
        if key not in params:
            raise MethodError(f"unknown parameter '{key}' for this method (known: {', '.join(params) or 'none'})")
        default = params[key]
        if isinstance(value, str) and default is not None and not isinstance(default, str):
            try:
                value = (value.lower() in ("1", "true")) if isinstance(default, bool) else type(default)(value)
            except ValueError:
                raise MethodError(f"parameter '{key}' expects {type(default).__name__}, got '{value}'") from None
        params[key] = value
    return params


def list_methods() -> dict[str, MethodFn]:
    _load_builtins()
    return dict(sorted(REGISTRY.items()))


def _load_builtins() -> None:
    from w2slab.methods import builtin  # noqa: F401  (registers on import)
