"""Run by tests/test_comfyui.py with ComfyUI's Python inside a ComfyUI folder (the working directory): ComfyUI's own
loaders and CLIPTextEncode, then the DICE nodes as ComfyUI loaded them from custom_nodes/. Writes every raw and
sharpened conditioning to a safetensors file, and what the dicts carried to a JSON beside it.

    python comfyui_encode.py SPEC.json OUT.safetensors
SPEC: {"clip": {"checkpoint": NAME} | {"dual_clip": [NAME1, NAME2], "type": "sdxl" | "sd3"}, "sharpener": NAME,
       "prompts": [...], "u": "", "strength": 1.0}
"""
import asyncio
import json
import sys

spec_path, out_path = sys.argv[1:3]
sys.argv = [sys.argv[0], "--cpu"]  # what the test server runs with
sys.path.insert(0, ".")

import comfy.options  # noqa: E402 - ComfyUI's

comfy.options.enable_args_parsing()  # as main.py does: ComfyUI reads sys.argv when its modules are imported
import nodes  # noqa: E402 - ComfyUI's
from safetensors.torch import save_file  # noqa: E402

spec = json.loads(open(spec_path).read())
asyncio.run(nodes.init_external_custom_nodes())  # custom_nodes/, as the server loads them
if "checkpoint" in spec["clip"]:
    clip = nodes.CheckpointLoaderSimple().load_checkpoint(spec["clip"]["checkpoint"])[1]
else:
    clip = nodes.DualCLIPLoader().load_clip(*spec["clip"]["dual_clip"], spec["clip"]["type"])[0]
encode = nodes.CLIPTextEncode().encode
sharpener = nodes.NODE_CLASS_MAPPINGS["LoadDiceSharpener"]().load(spec["sharpener"])[0]
apply = nodes.NODE_CLASS_MAPPINGS["ApplyDiceSharpener"]().apply
u = encode(clip, spec["u"])[0]
tensors, carried = {"u": u[0][0]}, []
for index, prompt in enumerate(spec["prompts"]):
    positive = encode(clip, prompt)[0]
    (sharpened,) = apply(sharpener, positive, u, spec["strength"])
    (raw_tensor, raw_dict), (new_tensor, new_dict) = positive[0], sharpened[0]
    tensors[f"raw_{index}"], tensors[f"dice_{index}"] = raw_tensor, new_tensor
    pooled_kept = new_dict.get("pooled_output") is raw_dict.get("pooled_output")
    if raw_dict.get("pooled_output") is not None:
        tensors[f"pooled_{index}"] = raw_dict["pooled_output"]
        if not pooled_kept:  # the family's rule rewrites it (SD3)
            tensors[f"dice_pooled_{index}"] = new_dict["pooled_output"]
    carried.append({"entries": len(sharpened), "keys": sorted(raw_dict) == sorted(new_dict), "pooled_kept": pooled_kept,
                    "same_values": all(new_dict[k] is raw_dict[k] for k in raw_dict if k != "pooled_output")})
save_file({k: v.contiguous() for k, v in tensors.items()}, out_path)
with open(out_path + ".json", "w") as f:
    json.dump(carried, f)
