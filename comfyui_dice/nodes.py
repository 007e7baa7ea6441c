"""The three DICE nodes: two loaders (ComfyUI's models/dice folder; a path, experiment or Hub id) and the apply node.

Each is a face over :mod:`dice.comfyui`; classes hold no state. A bad input raises one line (``dice.errors.UserError``)
that ComfyUI shows in its error panel; the server keeps running.
"""
import os

import folder_paths  # ComfyUI's

from dice.checkpoint import resolve_sharpener_files
from dice.comfyui import COMFYUI_FAMILIES, load_for_comfyui, sharpen_conditioning
from dice.errors import UserError
from dice.hub import is_repo_id

from . import REPOSITORY

FOLDER = "dice"  # ComfyUI/models/dice/, or a "dice:" entry of extra_model_paths.yaml
folder_paths.add_model_folder_path(FOLDER, os.path.join(folder_paths.models_dir, FOLDER), is_default=True)
folder_paths.folder_names_and_paths[FOLDER][1].add(".safetensors")  # the weights; their JSON lies beside them
EXPERIMENTS = os.path.join(REPOSITORY, "exps")  # where an experiment id ("3") is looked up: this clone's runs
FAMILIES = ", ".join(f.title for f in COMFYUI_FAMILIES.values())
SHARPENER = "DICE_SHARPENER"
CATEGORY = "conditioning/dice"


def sharpener_files() -> list[str]:
    """The weights files under the dice model folders that have their sharpener config beside them."""
    found = []
    for name in folder_paths.get_filename_list(FOLDER):
        try:
            resolve_sharpener_files(folder_paths.get_full_path(FOLDER, name))
        except UserError:  # e.g. accelerate's model.safetensors inside a training checkpoint
            continue
        found.append(name)
    return found


class _SharpenerLoader:
    RETURN_TYPES = (SHARPENER,)
    RETURN_NAMES = ("sharpener",)
    OUTPUT_TOOLTIPS = ("The sharpener with its recorded family and training options.",)
    FUNCTION = "load"
    CATEGORY = CATEGORY


class LoadDiceSharpener(_SharpenerLoader):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"sharpener_name": (sharpener_files(), {"tooltip": (
            "A DICE sharpener in ComfyUI/models/dice/: a folder exported by `python -m dice.export` or downloaded "
            "from the Hub (model.safetensors + config.json), or a training checkpoint (sharpener.safetensors + "
            "sharpener.json). Pick its .safetensors file.")})}}

    DESCRIPTION = f"Loads a DICE sharpener ({FAMILIES}) from ComfyUI's models/dice folder."

    def load(self, sharpener_name):
        return (load_for_comfyui(folder_paths.get_full_path_or_raise(FOLDER, sharpener_name), EXPERIMENTS),)


class LoadDiceSharpenerFromPath(_SharpenerLoader):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "source": ("STRING", {"default": "", "tooltip": (
                "A sharpener folder or .safetensors file (exported, or a training checkpoint), a training run "
                "folder (its latest checkpoint), an experiment id of this clone's exps/ (e.g. 3), or a Hub repo id "
                "(owner/name: from the Hugging Face cache, downloaded unless HF_HUB_OFFLINE=1).")}),
            "revision": ("STRING", {"default": "", "tooltip": "Hub repo ids only: a branch, tag or commit (empty: main)."}),
        }}

    DESCRIPTION = f"Loads a DICE sharpener ({FAMILIES}) from a path, a training run or a Hub repo id."

    @classmethod
    def IS_CHANGED(cls, source, revision=""):
        """A training run's latest checkpoint moves on: ComfyUI loads again when the weights it names change."""
        if is_repo_id(source.strip()):
            return f"{source.strip()}@{revision.strip()}"  # no Hub request each time a prompt is queued
        try:
            weights = resolve_sharpener_files(source.strip(), EXPERIMENTS)[0]
        except UserError:
            return ""  # load() says what is wrong
        return f"{weights}:{weights.stat().st_mtime_ns}"

    def load(self, source, revision=""):
        if not source.strip():
            raise UserError("no sharpener given. Type a sharpener folder, a run folder, an experiment id or a Hub repo id")
        return (load_for_comfyui(source.strip(), EXPERIMENTS, revision=revision.strip() or None),)


class ApplyDiceSharpener:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "sharpener": (SHARPENER, {"tooltip": "A DICE sharpener from a Load DICE Sharpener node."}),
            "positive": ("CONDITIONING", {"tooltip": "The prompt's conditioning (CLIPTextEncode of your prompt)."}),
            "u": ("CONDITIONING", {"tooltip": (
                "The sharpener's context u: the conditioning of the prompt it was trained with as u. That is the "
                "empty prompt (a CLIPTextEncode with no text; for an SDXL sharpener trained with --empty_prompt zeros, "
                "ConditioningZeroOut of it), or a negative prompt if it was trained with negative prompts. Wire the same "
                "node to KSampler's negative: at cfg 1.0 KSampler does not evaluate it.")}),
            "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.05, "tooltip": (
                "alpha in c + alpha * f(c, u): 1 as trained, 0 leaves the prompt unchanged.")}),
        }}

    RETURN_TYPES = ("CONDITIONING",)
    OUTPUT_TOOLTIPS = ("The sharpened positive conditioning: wire it to KSampler's positive and sample at cfg 1.0.",)
    FUNCTION = "apply"
    CATEGORY = CATEGORY
    DESCRIPTION = ("DICE: rewrites the prompt's conditioning so that sampling at cfg 1.0 (one network evaluation per "
                   "step) matches classifier-free guidance (two). Every other conditioning entry is carried over.")

    def apply(self, sharpener, positive, u, strength):
        return (sharpen_conditioning(sharpener, positive, u, strength),)


NODE_CLASS_MAPPINGS = {
    "LoadDiceSharpener": LoadDiceSharpener,
    "LoadDiceSharpenerFromPath": LoadDiceSharpenerFromPath,
    "ApplyDiceSharpener": ApplyDiceSharpener,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "LoadDiceSharpener": "Load DICE Sharpener",
    "LoadDiceSharpenerFromPath": "Load DICE Sharpener (path or Hub id)",
    "ApplyDiceSharpener": "Apply DICE Sharpener",
}
