"""dice: DICE (Distilling Classifier-Free Guidance into Text Embeddings), an open implementation.

``dice.apply(pipe, "user/dice-sd15")`` makes a stock diffusers pipeline sample with a trained
sharpener (one network evaluation per step instead of CFG's two); ``dice.remove(pipe)`` undoes it.
"""
from .addon import apply, remove
from .checkpoint import SharpenerConfig, load_sharpener, save_sharpener
from .checkpoint import TrainedSharpener as Sharpener  # a trained sharpener: save_pretrained, push_to_hub, from_pretrained
from .methods.dice import apply_sharpener

__all__ = ["Sharpener", "SharpenerConfig", "apply", "apply_sharpener", "load_sharpener", "remove", "save_sharpener"]
