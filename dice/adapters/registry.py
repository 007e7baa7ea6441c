"""Family name <-> adapter class, and recognising the family of a model before loading it."""
from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

from huggingface_hub import hf_hub_download
from huggingface_hub.errors import LocalEntryNotFoundError

from ..errors import UserError

# family -> (module, class); imported lazily so one family's extra needs don't burden another.
_ADAPTERS = {
    "sd15": ("dice.adapters.sd15", "SD15Adapter"),
    "sdxl": ("dice.adapters.sdxl", "SDXLAdapter"),
    "pixart": ("dice.adapters.pixart", "PixArtAdapter"),
    "pixart-sigma": ("dice.adapters.pixart_sigma", "PixArtSigmaAdapter"),
    "sd3": ("dice.adapters.sd3", "SD3Adapter"),
}
# diffusers pipeline class names (model_index.json) -> family.
_PIPELINE_FAMILIES = {
    "StableDiffusionPipeline": "sd15",
    "StableDiffusionImg2ImgPipeline": "sd15",
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusionXLImg2ImgPipeline": "sdxl",
    "PixArtAlphaPipeline": "pixart",
    "PixArtSigmaPipeline": "pixart-sigma",
    "StableDiffusion3Pipeline": "sd3",
    "StableDiffusion3Img2ImgPipeline": "sd3",
}
# diffusers' single-file model types -> family.
_SINGLE_FILE_FAMILIES = {
    "v1": "sd15",
    "v2": "sd2 (unsupported)",
    "xl_base": "sdxl",
    "xl_refiner": "sdxl-refiner (unsupported)",
    "playground-v2-5": "playground (unsupported)",
    "sd3": "sd3",
    "sd35_medium": "sd3",
    "sd35_large": "sd3",
}


def families() -> list[str]:
    return list(_ADAPTERS)


def entry_script(family: str) -> str:
    """The training script of a family: train_sd15.py, ..., train_pixart_sigma.py."""
    return f"train_{family.replace('-', '_')}.py"


def register_adapter(family: str, module: str, class_name: str) -> None:
    _ADAPTERS[family] = (module, class_name)


def adapter_class(family: str):
    if family not in _ADAPTERS:
        raise ValueError(f"unknown model family {family!r}; supported: {', '.join(_ADAPTERS)}")
    module, name = _ADAPTERS[family]
    return getattr(importlib.import_module(module), name)


def family_of_pipeline_class(class_name: str) -> str | None:
    return _PIPELINE_FAMILIES.get(class_name)


def family_of_single_file(path: str) -> str | None:
    """Guess the family of a single checkpoint file from its tensor names and shapes."""
    try:
        from diffusers.loaders.single_file_utils import infer_diffusers_model_type, load_single_file_checkpoint

        checkpoint = load_single_file_checkpoint(path)
        model_type = infer_diffusers_model_type(checkpoint)
    except Exception:  # noqa: BLE001 - unknown layouts are left to the loader's own error
        return None
    # diffusers recognises SDXL only by a key of OpenCLIP's 10th layer and calls anything unknown "v1";
    # SDXL's second text encoder or its size/pooled-text embedding (label_emb) is proof enough.
    if model_type == "v1" and any(
        k.startswith(("conditioner.embedders.1.model.", "model.diffusion_model.label_emb.")) for k in checkpoint
    ):
        model_type = "xl_base"
    return _SINGLE_FILE_FAMILIES.get(model_type, model_type)


def load_adapter(family: str, model: str, **kwargs):
    return adapter_class(family).from_pretrained(model, **kwargs)


def detect_family(model: str, revision: str | None = None) -> str | None:
    """The family of a hub id, diffusers folder or single file, if it can be told before loading."""
    if os.path.isfile(model) or looks_like_file(model):
        return family_of_single_file(model) if os.path.isfile(model) else None
    class_name = read_pipeline_class(model, revision)
    return family_of_pipeline_class(class_name) if class_name else None


class ModelLoadError(UserError, RuntimeError):
    """A base model could not be loaded or is of the wrong family; the message says what to do."""


def looks_like_file(model: str) -> bool:
    return model.endswith((".safetensors", ".ckpt", ".pt", ".bin", ".pth"))


def read_pipeline_class(model: str, revision: str | None = None) -> str | None:
    """The ``_class_name`` in a model's ``model_index.json`` (local folder or hub cache), if found."""
    index = read_model_index(model, revision)
    return index.get("_class_name") if index else None


def read_model_index(model: str, revision: str | None = None) -> dict | None:
    """A model's ``model_index.json`` (local folder or hub cache), if found."""
    if not os.path.exists(model) and (os.path.isabs(model) or model.startswith((".", "~")) or model.count("/") > 1):
        raise ModelLoadError(
            f"base model '{model}' does not exist. Pass an existing diffusers folder, a .safetensors/.ckpt file, "
            "or a hub id (organisation/name)"
        )
    if os.path.isdir(model):
        index = Path(model) / "model_index.json"
        if not index.is_file():
            raise ModelLoadError(
                f"'{model}' is a folder but has no model_index.json, so it is not a diffusers pipeline "
                "folder. Pass the folder that holds model_index.json, a hub id, or a single "
                ".safetensors/.ckpt file."
            )
        return json.loads(index.read_text())
    try:
        return json.loads(Path(hf_hub_download(model, "model_index.json", revision=revision)).read_text())
    except Exception as err:  # noqa: BLE001 - the real load below reports other failures with their cause

        if isinstance(err, LocalEntryNotFoundError) and is_offline():
            raise ModelLoadError(
                f"base model '{model}' is not a local folder or file, and it is not in the Hugging Face cache while "
                f"HF_HUB_OFFLINE=1. Pass a local diffusers folder or .safetensors file, or download it first "
                f"(huggingface-cli download {model})"
            ) from None
        return None


def is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")
