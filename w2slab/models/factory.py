"""``make_backend``: the backend named by a config (``probe`` on CPU or ``lm``), kept apart from
:mod:`w2slab.models.base` (the interface) so the implementations import the base, never the
other way round."""

from __future__ import annotations

from w2slab.models.base import Backend, BackendConfig


def make_backend(config: BackendConfig | str) -> Backend:
    config = BackendConfig.parse(config)
    if config.kind == "probe":
        from w2slab.models.probe import ProbeBackend  # lazy: only the backend asked for is imported

        return ProbeBackend(config)
    from w2slab.models.lm import LMBackend  # lazy: imports transformers and peft

    return LMBackend(config)
