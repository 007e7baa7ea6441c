"""Run by tests/test_comfyui.py with ComfyUI's Python inside a ComfyUI folder (the working directory): a diffusion
model and a VAE loaded by ComfyUI's own loaders (diffusers layouts are converted by them) and saved as one checkpoint
in ComfyUI's own layout, without text encoders, as Stability ships SD3.5's single files.

    python comfyui_save_checkpoint.py MODEL.safetensors VAE.safetensors OUT.safetensors
"""
import sys

model_path, vae_path, out_path = sys.argv[1:4]
sys.argv = [sys.argv[0], "--cpu"]  # what the test server runs with
sys.path.insert(0, ".")

import comfy.options  # noqa: E402 - ComfyUI's

comfy.options.enable_args_parsing()  # as main.py does: ComfyUI reads sys.argv when its modules are imported
import comfy.sd  # noqa: E402
import comfy.utils  # noqa: E402

model = comfy.sd.load_diffusion_model(model_path)
vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(vae_path))
comfy.sd.save_checkpoint(out_path, model, vae=vae)
print(type(model.model).__name__)
