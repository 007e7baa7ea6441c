"""dice: DICE (Distilling Classifier-Free Guidance into Text Embeddings), an open implementation."""
from .checkpoint import SharpenerConfig, load_sharpener, save_sharpener
from .sharpener import Sharpener, apply_sharpener

__all__ = ["Sharpener", "SharpenerConfig", "apply_sharpener", "load_sharpener", "save_sharpener"]
