"""HPS v2.1 (Table 1's four HPS columns and its DrawBench column): human-preference score of (image, prompt).

HPS v2.1 is an open_clip ViT-H-14 fine-tuned on human preferences (Wu et al. 2023; ``hpsv2`` package,
weights ``HPS_v2.1_compressed.pt`` in the Hub repo ``xswu/HPSv2``). ``hpsv2``'s benchmark scores each
image as ``100 · cos(image features, prompt features)`` and reports the mean per style (anime,
concept-art, paintings, photo; 800 prompts each) and over DrawBench's 200 prompts (its ``drawbench``
mode): the same form as the CLIP score, so this module only loads the model and names the result.
We do not install ``hpsv2`` itself: it pins pytest 7.2 and protobuf < 4, and its model code is
open_clip's, which is installed. The column a value belongs to is the sample folder's prompt set
(``sample.py --prompts hps-anime|...|drawbench``), recorded in the result's options.
"""
from __future__ import annotations

import os

import torch
from huggingface_hub import hf_hub_download, try_to_load_from_cache

from dice.errors import one_line
from evaluation.metrics.clip_score import calc_clip_score
from evaluation.metrics.images import Processes, open_image_collection
from evaluation.metrics.weights import MissingWeightsError, WrongWeightsError, is_offline
from evaluation.record import MetricResult

HPS_MODEL = "ViT-H-14"
HPS_REPO = "xswu/HPSv2"
HPS_FILE = "HPS_v2.1_compressed.pt"
HPS_WEIGHTS_ENV = "DICE_HPS_WEIGHTS"
MISSING = (f"HPS v2.1 needs its weights {HPS_FILE}: download it (`hf download {HPS_REPO} {HPS_FILE}`, or "
           f"https://huggingface.co/{HPS_REPO}) and pass --hps_weights PATH (or set {HPS_WEIGHTS_ENV}=PATH).")


def hps_weights_file(weights: str | None = None) -> str:
    """A local HPS v2.1 file: ``weights``, else $DICE_HPS_WEIGHTS, else the Hugging Face cache or a download."""
    weights = weights or os.environ.get(HPS_WEIGHTS_ENV) or None
    if weights:
        if not os.path.isfile(weights):
            raise MissingWeightsError(f"HPS weights file not found: {weights}. {MISSING}")
        return weights

    cached = try_to_load_from_cache(HPS_REPO, HPS_FILE)
    if isinstance(cached, str):
        return cached
    if is_offline():
        raise MissingWeightsError(f"{MISSING} (Offline: HF_HUB_OFFLINE=1, and not in the Hugging Face cache.)")
    try:
        return hf_hub_download(HPS_REPO, HPS_FILE)
    except Exception as error:  # noqa: BLE001 - no network, no access: the fix is the same
        raise MissingWeightsError(f"{MISSING} (Download failed: {one_line(error)[:300]})") from error


def load_hps(weights: str | None = None, device: str | torch.device = "cpu"):
    """(model, preprocess, tokenizer): open_clip ViT-H-14 with the HPS v2.1 weights (its ``state_dict``)."""
    path = hps_weights_file(weights)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - not a torch file, or one holding more than tensors
        raise WrongWeightsError(f"{path} is not a readable HPS weights file ({one_line(error)[:300]}). {MISSING}") from None
    state_dict = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(HPS_MODEL, pretrained=None)
    try:
        model.load_state_dict(state_dict)
    except (RuntimeError, TypeError, AttributeError) as error:
        raise WrongWeightsError(f"{path} does not hold open_clip {HPS_MODEL} weights ({one_line(error)[:300]}). {MISSING}") from None
    return model.to(device).eval().requires_grad_(False), preprocess, open_clip.get_tokenizer(HPS_MODEL)


def hps_options(weights: str | None = None) -> dict:
    """What a result scored with load_hps(weights) records about the network."""
    return {"model": f"HPS v2.1 ({HPS_MODEL})", "weights": weights or os.environ.get(HPS_WEIGHTS_ENV) or f"{HPS_REPO}/{HPS_FILE}"}


def calc_hps(
    images: str | os.PathLike, *, model=None, preprocess=None, tokenizer=None, hps_weights: str | None = None,
    batch_size: int = 32, num_workers: int = 0, allow_incomplete: bool = False, processes: Processes | None = None,
    options: dict | None = None,
) -> MetricResult:
    """Mean HPS v2.1 of a sample folder (image i against prompt i of its manifest), over all processes.
    ``options``: what an injected model is, recorded with the result (default: its class name)."""
    processes = processes or Processes()
    if model is None:
        open_image_collection(images, allow_incomplete=allow_incomplete, need_prompts=True)  # refuse before the slow load
        model, preprocess, tokenizer = load_hps(hps_weights, processes.device)
        options = hps_options(hps_weights)
    else:
        options = dict(options or {"model": type(model).__name__})
    result = calc_clip_score(images, model=model, preprocess=preprocess, tokenizer=tokenizer, batch_size=batch_size,
                             num_workers=num_workers, allow_incomplete=allow_incomplete, processes=processes,
                             metric="hps", options=options)
    result.options["prompt_set"] = (result.sampling_options or {}).get("prompts")
    return result
