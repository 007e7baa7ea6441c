"""Family name <-> adapter class, and recognising the family of a model before loading it."""
from __future__ import annotations

import importlib

# family -> (module, class); imported lazily so one family's extra needs don't burden another.
_ADAPTERS = {
    "sd15": ("dice.adapters.sd15", "SD15Adapter"),
    "sdxl": ("dice.adapters.sdxl", "SDXLAdapter"),
    "pixart": ("dice.adapters.pixart", "PixArtAdapter"),
}
# diffusers pipeline class names (model_index.json) -> family.
_PIPELINE_FAMILIES = {
    "StableDiffusionPipeline": "sd15",
    "StableDiffusionImg2ImgPipeline": "sd15",
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusionXLImg2ImgPipeline": "sdxl",
    "PixArtAlphaPipeline": "pixart",
    "PixArtSigmaPipeline": "pixart-sigma (unsupported)",
}
# diffusers' single-file model types -> family.
_SINGLE_FILE_FAMILIES = {
    "v1": "sd15",
    "v2": "sd2 (unsupported)",
    "xl_base": "sdxl",
    "xl_refiner": "sdxl-refiner (unsupported)",
    "playground-v2-5": "playground (unsupported)",
}


def families() -> list[str]:
    return list(_ADAPTERS)


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
    import os

    from .base import _looks_like_file, read_pipeline_class

    if os.path.isfile(model) or _looks_like_file(model):
        return family_of_single_file(model) if os.path.isfile(model) else None
    class_name = read_pipeline_class(model, revision)
    return family_of_pipeline_class(class_name) if class_name else None
