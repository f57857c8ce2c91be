"""w2slab: automated weak-to-strong alignment research."""

__version__ = "0.1.0"
