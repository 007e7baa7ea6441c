"""Write a diffusers SD1.5 / SDXL pipeline as ONE original-layout ("LDM") ``.safetensors`` file.

This is the layout of the checkpoints people download from civitai and load with
``StableDiffusionPipeline.from_single_file`` / ``StableDiffusionXLPipeline.from_single_file``:

* UNet  -> ``model.diffusion_model.`` (``input_blocks`` / ``middle_block`` / ``output_blocks``)
* VAE   -> ``first_stage_model.`` (``encoder.down.{i}.block.{j}``, ``decoder.up.{i}``, ``mid.attn_1`` ...)
* SD1.5 text encoder (CLIP ViT-L)  -> ``cond_stage_model.transformer.text_model.``
* SDXL text encoder 1 (CLIP ViT-L) -> ``conditioner.embedders.0.transformer.text_model.``
* SDXL text encoder 2 (OpenCLIP bigG) -> ``conditioner.embedders.1.model.`` (``transformer.resblocks.{i}``
  with merged ``attn.in_proj_weight``, ``token_embedding``, ``positional_embedding``, ``ln_final``,
  ``text_projection`` stored transposed)

Each mapping below is the inverse of diffusers' own forward converters in
``diffusers/loaders/single_file_utils.py`` (``convert_ldm_unet_checkpoint``,
``convert_ldm_vae_checkpoint``, ``convert_ldm_clip_checkpoint``, ``convert_open_clip_checkpoint``),
written for any number of blocks / ``layers_per_block`` / transformer layers, so the tiny test
pipelines and real models go through the same code. Every tensor of every component must be mapped
exactly once, otherwise a ``ValueError`` names the leftovers (no silent drops).

Test and demo tooling: it makes single files from the tiny pipelines so the single-file loading
path can be exercised offline. Command line::

    python -m dice.testkit.single_file <diffusers_folder> <out.safetensors> [--family sd15|sdxl] [--dtype fp16]

Family inference caveat: diffusers decides a file's model type from fixed tensor names
(``infer_diffusers_model_type``): SDXL base is recognised by
``conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias``, i.e. an OpenCLIP encoder
with at least 10 layers, and anything it does not recognise falls back to "v1" (SD1.5). A tiny SDXL
whose second text encoder has fewer than 10 layers is therefore reported as "v1".
``single_file_family_warnings`` says when that (or diffusers' CLIP dispatch problem with two equally
wide text encoders) will bite.
"""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..errors import ArgumentParser, check_output_file, exit_on_user_error, give_default_permissions

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD15_CLIP_PREFIX = "cond_stage_model.transformer."
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer."
SDXL_OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."
# The key diffusers' infer_diffusers_model_type looks for to call a file "xl_base".
SDXL_MARKER_LAYER = 9

PIPELINE_CLASSES = {"sd15": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline"}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


# ---- UNet ----------------------------------------------------------------------------------
# diffusers ResnetBlock2D parameter names -> LDM ResBlock names.
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
    # SDXL's size/pooled-text embedding ("text_time") and class embeddings share the LDM label_emb.
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "class_embedding.linear_1": "label_emb.0.0",
    "class_embedding.linear_2": "label_emb.0.2",
}


def _resnet_rest(rest: str) -> str:
    """``norm1.weight`` -> ``in_layers.0.weight`` (the diffusers -> LDM ResBlock rename)."""
    head, _, tail = rest.partition(".")
    if head not in _UNET_RESNET:
        raise KeyError(rest)
    return f"{_UNET_RESNET[head]}.{tail}"


def unet_to_ldm(unet) -> dict[str, torch.Tensor]:
    """A diffusers ``UNet2DConditionModel`` as LDM ``openaimodel.UNetModel`` tensors (no prefix).

    LDM numbers the down path as ``input_blocks`` 1.. with ``layers_per_block + 1`` slots per
    block (the last slot holds the downsampler ``.0.op``), the up path as ``output_blocks`` 0.. with
    ``layers_per_block + 1`` slots per block (upsampler after the attention: ``.2.conv`` when the
    block has attentions, else ``.1.conv``), and the mid block as resnet / attention / resnet.
    """
    per_block = unet.config.layers_per_block
    if not isinstance(per_block, int):
        raise ValueError(
            f"layers_per_block={per_block!r} varies per block; the LDM layout (and diffusers' converter) "
            "needs one integer."
        )
    slots = per_block + 1
    for b, block in enumerate(unet.down_blocks):
        if len(block.resnets) != per_block:
            raise ValueError(f"down_blocks.{b} has {len(block.resnets)} resnets, expected {per_block}")
    for b, block in enumerate(unet.up_blocks):
        if len(block.resnets) != slots:
            raise ValueError(f"up_blocks.{b} has {len(block.resnets)} resnets, expected {slots}")
    up_has_attn = [bool(getattr(block, "attentions", None)) for block in unet.up_blocks]
    addition = unet.config.addition_embed_type
    if addition not in (None, "text_time"):
        raise ValueError(f"addition_embed_type={addition!r} has no LDM single-file layout")

    patterns = [
        (r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)",
         lambda b, l, r: f"input_blocks.{1 + b * slots + l}.0.{_resnet_rest(r)}"),
        (r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)",
         lambda b, l, r: f"input_blocks.{1 + b * slots + l}.1.{r}"),
        (r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)",
         lambda b, r: f"input_blocks.{1 + b * slots + per_block}.0.op.{r}"),
        (r"mid_block\.resnets\.(\d+)\.(.+)", lambda i, r: f"middle_block.{2 * i}.{_resnet_rest(r)}"),
        (r"mid_block\.attentions\.0\.(.+)", lambda r: f"middle_block.1.{r}"),
        (r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)",
         lambda b, l, r: f"output_blocks.{b * slots + l}.0.{_resnet_rest(r)}"),
        (r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)",
         lambda b, l, r: f"output_blocks.{b * slots + l}.1.{r}"),
        (r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)",
         lambda b, r: f"output_blocks.{b * slots + per_block}.{2 if up_has_attn[b] else 1}.conv.{r}"),
    ]
    compiled = [(re.compile(p), fn) for p, fn in patterns]

    def rename(key: str) -> str:
        module, _, param = key.rpartition(".")
        if module in _UNET_TOP:
            return f"{_UNET_TOP[module]}.{param}"
        for regex, fn in compiled:
            match = regex.fullmatch(key)
            if match:
                return fn(*(int(g) if g.isdigit() else g for g in match.groups()))
        raise KeyError(key)

    return _convert(unet.state_dict(), rename, "unet")


# ---- VAE -----------------------------------------------------------------------------------
_VAE_TOP = {
    "encoder.conv_in": "encoder.conv_in",
    "encoder.conv_out": "encoder.conv_out",
    "encoder.conv_norm_out": "encoder.norm_out",
    "decoder.conv_in": "decoder.conv_in",
    "decoder.conv_out": "decoder.conv_out",
    "decoder.conv_norm_out": "decoder.norm_out",
    "quant_conv": "quant_conv",
    "post_quant_conv": "post_quant_conv",
}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}


def vae_to_ldm(vae) -> dict[str, torch.Tensor]:
    """A diffusers ``AutoencoderKL`` as LDM ``AutoencoderKL`` tensors (no prefix).

    The decoder's up blocks are numbered in reverse in LDM (``up.{n-1-i}``), and the mid-block
    attention's q/k/v/proj_out are 1x1 convolutions there ([C, C, 1, 1]), linears in diffusers.
    """
    num_up = len(vae.decoder.up_blocks)

    def resnet(rest: str) -> str:
        head, _, tail = rest.partition(".")
        if head not in _VAE_RESNET:
            raise KeyError(rest)
        return f"{_VAE_RESNET[head]}.{tail}"

    def rename(key: str) -> str:
        module, _, param = key.rpartition(".")
        if module in _VAE_TOP:
            return f"{_VAE_TOP[module]}.{param}"
        if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            return f"encoder.down.{m[1]}.block.{m[2]}.{resnet(m[3])}"
        if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
            return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
        if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            return f"decoder.up.{num_up - 1 - int(m[1])}.block.{m[2]}.{resnet(m[3])}"
        if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
            return f"decoder.up.{num_up - 1 - int(m[1])}.upsample.conv.{m[2]}"
        if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
            return f"{m[1]}.mid.block_{int(m[2]) + 1}.{resnet(m[3])}"
        if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)", key):
            if m[2] in _VAE_ATTN:
                return f"{m[1]}.mid.attn_1.{_VAE_ATTN[m[2]]}.{m[3]}"
        raise KeyError(key)

    def reshape(ldm_key: str, tensor: torch.Tensor) -> torch.Tensor:
        if ".mid.attn_1." in ldm_key and ldm_key.endswith(("q.weight", "k.weight", "v.weight", "proj_out.weight")):
            return tensor.reshape(*tensor.shape, 1, 1) if tensor.ndim == 2 else tensor
        return tensor

    return _convert(vae.state_dict(), rename, "vae", reshape)


# ---- text encoders -------------------------------------------------------------------------
def text_model_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys as ``text_model.*`` whatever the transformers version (CLIPTextModel lost its
    ``text_model`` wrapper in transformers 5.6; the projection model keeps it)."""
    out = {}
    for key, value in state_dict.items():
        if key.endswith("position_ids"):
            continue  # a buffer, not a weight; rebuilt by the model
        if key.startswith("text_model.") or key == "text_projection.weight":
            out[key] = value
        else:
            out["text_model." + key] = value
    return out


def clip_to_ldm(text_encoder) -> dict[str, torch.Tensor]:
    """CLIP ViT-L (transformers ``CLIPTextModel``) as the LDM ``FrozenCLIPEmbedder``'s ``transformer``:
    the Hugging Face names themselves, under ``text_model.``."""
    state = text_model_keys(text_encoder.state_dict())
    if "text_projection.weight" in state:
        raise ValueError("a CLIP-L text encoder with a projection has no place in the LDM layout")
    return state


_OPEN_CLIP_TOP = {
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
}
_OPEN_CLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}


def open_clip_to_ldm(text_encoder) -> dict[str, torch.Tensor]:
    """OpenCLIP bigG (transformers ``CLIPTextModelWithProjection``) in open_clip's own layout.

    q/k/v projections merge into ``attn.in_proj_weight`` / ``in_proj_bias`` (q, k, v stacked on
    dim 0), and ``text_projection`` is stored as [hidden, projection] (the transposed linear weight).
    """
    state = text_model_keys(text_encoder.state_dict())
    out: dict[str, torch.Tensor] = {}
    merged: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    leftovers = []
    for key, value in state.items():
        if key in _OPEN_CLIP_TOP:
            out[_OPEN_CLIP_TOP[key]] = value
        elif key == "text_projection.weight":
            out["text_projection"] = value.t().contiguous()
        elif m := re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", key):
            merged.setdefault((int(m[1]), m[3]), {})[m[2]] = value
        elif (m := re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key)) and m[2] in _OPEN_CLIP_LAYER:
            out[f"transformer.resblocks.{m[1]}.{_OPEN_CLIP_LAYER[m[2]]}.{m[3]}"] = value
        else:
            leftovers.append(key)
    for (layer, param), parts in sorted(merged.items()):
        if set(parts) != {"q", "k", "v"}:
            leftovers.append(f"layer {layer} {param}: only {sorted(parts)} of q/k/v")
            continue
        out[f"transformer.resblocks.{layer}.attn.in_proj_{param}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    if "text_projection" not in out:
        leftovers.append("text_projection.weight (missing)")
    if leftovers:
        raise ValueError(f"text_encoder_2: no OpenCLIP name for {leftovers[:10]}")
    return out


# ---- the whole pipeline --------------------------------------------------------------------
def _convert(state_dict, rename, what, reshape=None) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    unmapped = []
    for key, value in state_dict.items():
        try:
            new = rename(key)
        except KeyError:
            unmapped.append(key)
            continue
        if new in out:
            raise ValueError(f"{what}: two tensors map to LDM key {new!r} (the second is {key!r})")
        out[new] = reshape(new, value) if reshape else value
    if unmapped:
        raise ValueError(
            f"{what}: {len(unmapped)} tensors have no original-layout name (unsupported architecture?): "
            f"{unmapped[:10]}"
        )
    return out


def to_ldm_state_dict(pipe, family: str) -> dict[str, torch.Tensor]:
    """All of ``pipe``'s weights under their original single-file names."""
    if family not in PIPELINE_CLASSES:
        raise ValueError(f"single files are written for {', '.join(PIPELINE_CLASSES)}, not {family!r}")
    parts = [(UNET_PREFIX, unet_to_ldm(pipe.unet)), (VAE_PREFIX, vae_to_ldm(pipe.vae))]
    if family == "sd15":
        parts.append((SD15_CLIP_PREFIX, clip_to_ldm(pipe.text_encoder)))
    else:
        parts.append((SDXL_CLIP_PREFIX, clip_to_ldm(pipe.text_encoder)))
        parts.append((SDXL_OPEN_CLIP_PREFIX, open_clip_to_ldm(pipe.text_encoder_2)))
    return {prefix + key: value for prefix, tensors in parts for key, value in tensors.items()}


def family_of_folder(folder: str | os.PathLike) -> str:
    class_name = json.loads((Path(folder) / "model_index.json").read_text()).get("_class_name")
    for family, name in PIPELINE_CLASSES.items():
        if class_name in (name, name.replace("Pipeline", "Img2ImgPipeline")):
            return family
    raise ValueError(f"{folder} holds a {class_name}; single files are written for SD1.5 and SDXL pipelines only")


def load_pipeline(folder: str | os.PathLike, family: str, dtype: torch.dtype | None = None, variant: str | None = None):
    """The diffusers pipeline in ``folder``. Without ``dtype``, diffusers loads the UNet and VAE in
    float32 whatever their stored dtype (transformers keeps the text encoders' stored dtype)."""
    import diffusers

    kwargs = {"dtype": dtype} if dtype is not None else {}
    return getattr(diffusers, PIPELINE_CLASSES[family]).from_pretrained(folder, variant=variant, **kwargs)


def single_file_family_warnings(pipe, family: str) -> list[str]:
    """Why diffusers may mis-read a file written from ``pipe`` (tiny architectures only)."""
    if family != "sdxl":
        return []
    notes = []
    layers = pipe.text_encoder_2.config.num_hidden_layers
    if layers <= SDXL_MARKER_LAYER:
        notes.append(
            f"text_encoder_2 has {layers} layers; diffusers recognises SDXL single files by OpenCLIP layer "
            f"{SDXL_MARKER_LAYER} (conditioner.embedders.1.model.transformer.resblocks.{SDXL_MARKER_LAYER}."
            "mlp.c_proj.bias), so infer_diffusers_model_type will call this file 'v1' (SD1.5)."
        )
    width_1 = pipe.text_encoder.config.hidden_size
    width_2 = pipe.text_encoder_2.config.hidden_size
    if width_1 == width_2:
        notes.append(
            f"both text encoders are {width_1} wide; diffusers' from_single_file picks the CLIP-L weights for "
            "every text encoder whose width matches them, so text_encoder_2 would be loaded wrongly."
        )
    return notes


def save_single_file(
    pipe_or_folder, out_path: str | os.PathLike, family: str | None = None, dtype: torch.dtype | None = None,
) -> Path:
    """Write ``pipe_or_folder`` (a pipeline or a diffusers folder) as one original-layout safetensors file.

    ``family`` ("sd15" / "sdxl") defaults to the folder's model_index.json or the pipeline's class;
    ``dtype`` casts the floating tensors (e.g. ``torch.float16`` to halve a real model's file).
    Returns the written path.
    """
    if isinstance(pipe_or_folder, (str, os.PathLike)):
        folder = Path(pipe_or_folder)
        if not (folder / "model_index.json").is_file():
            raise FileNotFoundError(f"{folder} is not a diffusers pipeline folder (no model_index.json)")
        family = family or family_of_folder(folder)
        pipe = load_pipeline(folder, family, dtype)
    else:
        pipe = pipe_or_folder
        if family is None:
            names = {v: k for k, v in PIPELINE_CLASSES.items()}
            family = next((names[c.__name__] for c in type(pipe).__mro__ if c.__name__ in names), None)
            if family is None:
                raise ValueError(f"cannot tell the family of a {type(pipe).__name__}; pass family=")
    tensors = to_ldm_state_dict(pipe, family)
    # Own, contiguous storage for every tensor (safetensors refuses shared or strided ones).
    tensors = {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().to("cpu").contiguous().clone()
        for k, v in tensors.items()
    }
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_path), metadata={"format": "pt", "dice_family": family})
    give_default_permissions(out_path)
    return out_path


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="python -m dice.testkit.single_file",
        description="Convert a diffusers SD1.5/SDXL folder into one original-layout .safetensors file "
        "(loadable with from_single_file; offline, pass the folder as its config).",
    )
    parser.add_argument("folder", help="diffusers pipeline folder (holds model_index.json)")
    parser.add_argument("out", help="output .safetensors path")
    parser.add_argument("--family", choices=sorted(PIPELINE_CLASSES), default=None,
                        help="model family (default: read from model_index.json)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="load and write floating tensors in this dtype, e.g. fp16 to halve a real model's "
                        "file (default: as loaded: diffusers loads UNet and VAE in fp32)")
    parser.add_argument("--variant", default=None, help="weights variant of the folder, e.g. fp16")
    args = parser.parse_args(argv)
    if not str(args.out).endswith(".safetensors"):
        parser.error("the output must end in .safetensors")
    try:
        family = args.family or family_of_folder(args.folder)
    except (OSError, ValueError) as err:
        parser.error(str(err))
    check_output_file(args.out, "out")
    dtype = DTYPES.get(args.dtype)
    pipe = load_pipeline(args.folder, family, dtype, args.variant)
    path = save_single_file(pipe, args.out, family, dtype)
    print(f"wrote {path} ({family}, {path.stat().st_size / 2**20:.1f} MiB)")
    for note in single_file_family_warnings(pipe, family):
        print(f"warning: {note}", file=sys.stderr)
    print(f"load it with: {PIPELINE_CLASSES[family]}.from_single_file({str(path)!r}, config={str(args.folder)!r})")
    return 0


if __name__ == "__main__":
    with exit_on_user_error():
        sys.exit(main())
