"""How close the ComfyUI node's SD3 output is to the library's when ComfyUI pads T5 to fewer tokens than training did.

Not a speed figure: an agreement figure, measured on random weights. The library (``dice.apply``, training) sharpens
diffusers' SD3 embedding: 77 CLIP-L/G tokens then ``max_sequence_length`` T5 tokens (the pipeline's 256, recorded in
the sharpener). ComfyUI pads T5 only to the prompt's length, at least 77 tokens, unless ``T5TokenizerOptions`` sets
``min_length``. The sharpener acts per token but attends over u, and u's T5 padding tokens are part of that context,
so the node's output differs from the library's wherever u's T5 length differs from the trained one. Measured here,
for the same encoders, prompts and sharpener (random, the paper's layout, 4096 wide):

* ``comfyui_default``: ComfyUI's default layout (T5 padded to 77) against the library's at 256: the relative
  difference ``|r_node - r_lib| / |r_lib|`` of the DICE residual ``r = sharpened - raw`` on the CLIP tokens, on the
  prompt's real T5 tokens and on the pooled vector; and how much ComfyUI's raw T5 tokens differ from diffusers' (T5
  runs without an attention mask in both, so its real tokens see the padding).
* ``t5_tokenizer_options``: ComfyUI with ``T5TokenizerOptions`` min_length 256 (the trained layout): the largest
  absolute difference, beside the largest absolute value of the library's output (0 up to float rounding).
* ``without_t5``: ComfyUI without T5 (the node puts diffusers' zero tokens back into u): the same.

Setups: ``tiny``: dice's tiny SD3 at SD3's real text widths (CLIP-L 768, CLIP-G 1280, T5 4096; two small layers
each; its tiny vocabulary); ``full``: the real CLIP-L, OpenCLIP bigG and T5-XXL architectures with random weights in
bf16 (11 GB) and the real tokenizers of the ComfyUI test host (``../shared/comfyui``).

    python benchmarks/comfyui_sd3_t5.py --setup tiny
    flock /tmp/dice-bigmem.lock python benchmarks/comfyui_sd3_t5.py --setup full
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import common  # noqa: E402
from dice.adapters import adapter_class  # noqa: E402
from dice.comfyui import load_for_comfyui, sharpen_conditioning  # noqa: E402
from dice.methods.dice import sharpen  # noqa: E402
from dice.testkit import comfyui as host_tools  # noqa: E402

TRAINED_LENGTH = 256  # the stock pipeline's max_sequence_length, the library's default
COMFYUI_LENGTH = 77  # ComfyUI's SD3 T5 min_length
CLIP_TOKENS = 77


def relative(node: torch.Tensor, library: torch.Tensor) -> float:
    return round(((node - library).norm() / library.norm()).item(), 4)


def largest_difference(node: torch.Tensor, library: torch.Tensor) -> dict:
    """The largest absolute difference, and the largest absolute value of the library's tensor to judge it by."""
    return {"max_abs": (node - library).abs().max().item(), "of_max_value": library.abs().max().item()}


def node_output(sharpener, cond, uncond) -> tuple[torch.Tensor, torch.Tensor]:
    """The node on ComfyUI-shaped conditionings (its tensors, batch by batch as CLIPTextEncode gives them)."""
    (out,) = sharpen_conditioning(sharpener, [[cond.embeds, {"pooled_output": cond.pooled}]],
                                  [[uncond.embeds[:1], {"pooled_output": uncond.pooled[:1]}]])
    return out[0], out[1]["pooled_output"]


@torch.no_grad()
def measure(pipe, sharpener, prompts: list[str]) -> dict:
    def encoded(length):
        adapter = adapter_class("sd3")(pipe, "random-sd3", {"max_sequence_length": length})
        u = adapter.encode_negative([""])  # encoded once, as ComfyUI's u; the library gets it once per prompt
        return adapter, adapter.encode_prompts(prompts), u.replace(embeds=u.embeds.expand(len(prompts), -1, -1),
                                                                   pooled=u.pooled.expand(len(prompts), -1))

    library, cond, uncond = encoded(TRAINED_LENGTH)
    ours = sharpen(library, sharpener.module, cond.to(dtype=torch.float32), uncond.to(dtype=torch.float32))
    real_t5 = [len(ids) for ids in pipe.tokenizer_3(prompts).input_ids] if pipe.text_encoder_3 is not None else None
    result = {}
    if real_t5 is None:
        _, c, u = encoded(0)  # ComfyUI without T5: the CLIP tokens alone
        embeds, pooled = node_output(sharpener, c.to(dtype=torch.float32), u.to(dtype=torch.float32))
        return {"without_t5": {"tokens": largest_difference(embeds, ours.embeds[:, :CLIP_TOKENS]),
                               "pooled": largest_difference(pooled, ours.pooled)}}
    embeds, pooled = node_output(sharpener, cond.to(dtype=torch.float32), uncond.to(dtype=torch.float32))
    result["t5_tokenizer_options"] = {"tokens": largest_difference(embeds, ours.embeds),
                                      "pooled": largest_difference(pooled, ours.pooled)}
    _, c, u = encoded(COMFYUI_LENGTH)
    c, u = c.to(dtype=torch.float32), u.to(dtype=torch.float32)
    embeds, pooled = node_output(sharpener, c, u)
    raw = cond.embeds.float()
    lib_residual, node_residual = ours.embeds - raw, embeds - c.embeds
    real = torch.zeros(raw.shape[:2], dtype=torch.bool)
    for row, count in enumerate(real_t5):
        real[row, CLIP_TOKENS:CLIP_TOKENS + count] = True
    node_real = real[:, :embeds.shape[1]]
    result["comfyui_default"] = {
        "comfyui_t5_tokens": COMFYUI_LENGTH, "trained_t5_tokens": TRAINED_LENGTH, "prompt_t5_tokens": real_t5,
        "raw_t5_real_tokens": relative(c.embeds[node_real], raw[real]),
        "residual_clip_tokens": relative(node_residual[:, 1:CLIP_TOKENS], lib_residual[:, 1:CLIP_TOKENS]),
        "residual_t5_real_tokens": relative(node_residual[node_real], lib_residual[real]),
        "residual_pooled": relative(pooled - c.pooled.float(), ours.pooled - cond.pooled.float()),
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setup", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--out", default=None, help="extra folder for the JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory() as folder:
        path = host_tools.write_random_sharpener(Path(folder) / "sharpener", "sd3", 4096, seed=0,
                                                 family_options={"max_sequence_length": TRAINED_LENGTH})
        sharpener = load_for_comfyui(path, folder)
    prompts = common.captions(args.prompts)
    result = {"setup": args.setup, "prompts": prompts, "sharpener": "random (seed 0), 4096 wide, max_sequence_length 256"}
    for t5 in (True, False):
        if args.setup == "tiny":
            pipe = host_tools.tiny_sd3_at_real_widths(t5=t5)
        else:
            pipe = host_tools.build_sd3_text(host_tools.host_source(), t5=t5, dtype=torch.bfloat16)
        result.update(measure(pipe, sharpener, prompts))
        del pipe
    result["environment"] = common.environment(device)
    common.write_result("comfyui_sd3_t5", args.setup, device, result, args.out)


if __name__ == "__main__":
    main()
