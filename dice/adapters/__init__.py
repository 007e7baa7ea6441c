"""Per-family adapters behind one interface (see base.Adapter)."""
from .base import Adapter, Conditioning, ModelLoadError
from .registry import adapter_class, families, load_adapter

__all__ = ["Adapter", "Conditioning", "ModelLoadError", "adapter_class", "families", "load_adapter"]
