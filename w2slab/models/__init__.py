"""Model backends behind one interface: ``probe`` (CPU) and ``lm`` (GPU)."""

from w2slab.models.base import Backend, BackendConfig, LossFn, soft_xent
from w2slab.models.factory import make_backend

__all__ = ["Backend", "BackendConfig", "LossFn", "make_backend", "soft_xent"]
