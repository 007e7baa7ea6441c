"""The shapes world: a trained toy text-to-image world in which CFG matters and DICE can be measured.

``world`` generates captioned images (two coloured shapes, a held-out set of unseen combinations),
``model`` defines its small SD1.5-architecture pipeline and its flow-matching twin (an SD3 transformer
around the same VAE and text encoder), ``pretrain`` trains them and the attribute ``evaluator`` from
nothing, and ``scoring`` turns generated images into prompt accuracy and a Fréchet distance. The
trained models ship in ``dice/assets/shapes_world/``.
"""
from .scoring import DEFAULT_EVALUATOR, DEFAULT_FLOW_PIPELINE, DEFAULT_FLOW_SHARPENER, DEFAULT_PIPELINE, DEFAULT_SHARPENER
from .world import (
    COLOURS,
    SHAPES,
    TEMPLATES,
    Combination,
    evaluation_prompts,
    parse_caption,
    render,
    scenes,
    unseen_combinations,
    write_imagefolder,
    write_prompt_file,
)

__all__ = [
    "COLOURS", "DEFAULT_EVALUATOR", "DEFAULT_FLOW_PIPELINE", "DEFAULT_FLOW_SHARPENER", "DEFAULT_PIPELINE", "DEFAULT_SHARPENER", "SHAPES", "TEMPLATES", "Combination", "evaluation_prompts",
    "parse_caption", "render", "scenes", "unseen_combinations", "write_imagefolder", "write_prompt_file",
]
