"""ComfyUI nodes for DICE: load a sharpener, sharpen the positive CONDITIONING, sample at cfg 1.0.

Install (README, "ComfyUI"): link this folder into ``ComfyUI/custom_nodes/`` from a clone of the repository; the
nodes import the ``dice`` library beside it, which needs only what ComfyUI's environment already has (torch,
safetensors; huggingface_hub, which transformers brings, for Hub ids). Nothing is installed into ComfyUI's Python.
"""
import os
import sys

REPOSITORY = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))  # through the custom_nodes/ link
if REPOSITORY not in sys.path:
    sys.path.append(REPOSITORY)  # appended: the repository's folders never shadow ComfyUI's or other nodes' modules

import huggingface_hub  # noqa: E402 - transformers' own dependency, so in every ComfyUI environment

if tuple(int(part) for part in huggingface_hub.__version__.split(".")[:2]) < (0, 25):
    raise ImportError(f"the DICE nodes need huggingface_hub >= 0.25 (ComfyUI's Python has {huggingface_hub.__version__}): "
                      "pip install -U 'huggingface_hub>=0.25'")
try:
    import dice  # noqa: E402
except ModuleNotFoundError as err:
    if err.name != "dice":
        raise
    raise ImportError(f"the DICE nodes need the dice library beside this folder ({REPOSITORY}/dice): link the folder "
                      "comfyui_dice of a clone of the repository into custom_nodes/ rather than copying it") from err
if os.path.dirname(os.path.dirname(os.path.realpath(dice.__file__))) != REPOSITORY:
    raise ImportError(f"another 'dice' package ({dice.__file__}) shadows the DICE library in {REPOSITORY}. "
                      "Uninstall it from ComfyUI's Python (pip uninstall dice)")

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
