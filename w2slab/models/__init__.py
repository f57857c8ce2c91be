"""Model backends behind one interface: ``probe`` (CPU) and ``lm`` (GPU)."""

from w2slab.models.base import Backend, BackendConfig, LossFn, make_backend, soft_xent

__all__ = ["Backend", "BackendConfig", "LossFn", "make_backend", "soft_xent"]
