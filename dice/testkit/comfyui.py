"""A real ComfyUI as a test host for the DICE node, and random-weight models it accepts.

ComfyUI (GPL-3.0) is never copied into this repository: the host is a ComfyUI folder outside it (``$DICE_COMFYUI``,
default ``../shared/comfyui`` beside the repository), copied to a temporary folder for each run, with the node
installed as the README tells users (the ``comfyui_dice`` folder linked into ``custom_nodes/``). The server runs
headless on the CPU, on a free port of 127.0.0.1 only, and is stopped by its PID. ``python -m dice.testkit.comfyui
screenshot OUT.png`` photographs the example workflow in ComfyUI's page for the README (headless Chromium).

ComfyUI builds SD1.5's VAE and CLIP-L with their real shapes and recognises a UNet by its channel counts, so the
test models are real architectures with random weights (:mod:`dice.testkit.full_size`), rounded to fp16 so that
the single file ComfyUI reads and the diffusers pipeline our side encodes with hold the same values. Tokenizers:
the host's own CLIP vocabulary (``comfy/sd1_tokenizer``), so both sides tokenise alike.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..checkpoint import SharpenerConfig, save_sharpener
from ..errors import ArgumentParser, UserError, exit_on_user_error
from ..sharpener import Sharpener
from .full_size import (
    SD3_CLIP_G_CONFIG,
    SD3_CLIP_L_CONFIG,
    SD3_SCHEDULER_CONFIG,
    SD3_T5_CONFIG,
    SD3_VAE_CONFIG,
    SD15_SCHEDULER_CONFIG,
    SD15_TEXT_CONFIG,
    SD15_UNET_CONFIG,
    SD15_VAE_CONFIG,
    SDXL_TEXT_2_CONFIG,
)
from .single_file import save_single_file, text_model_keys
from .tiny import build_tiny_pipeline

REPOSITORY = Path(__file__).resolve().parents[2]
NODE_FOLDER = REPOSITORY / "comfyui_dice"
NODE_LINK_NAME = "comfyui-dice"  # the name the README's install command gives the link
HOST_ENV = "DICE_COMFYUI"
# The Python packages ComfyUI needs on top of this repository's requirements (torch stays pinned by them).
HOST_REQUIREMENTS = REPOSITORY / "tests" / "comfyui_host_requirements.txt"
LOOPBACK = "127.0.0.1"
# A ComfyUI environment has neither: the test server runs with them uninstalled (see BLOCK_SITECUSTOMIZE).
NOT_IN_COMFYUI = ("diffusers", "accelerate")

# The slim SD1.5 UNet ComfyUI still recognises as SD1.5 (model_channels 320, context 768): two blocks, one layer each.
SLIM_UNET = dict(block_out_channels=(320, 640), layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))


def host_source() -> Path:
    """The ComfyUI folder the tests copy: ``$DICE_COMFYUI`` or ``../shared/comfyui`` beside the repository."""
    source = Path(os.environ.get(HOST_ENV) or REPOSITORY.parent / "shared" / "comfyui")
    if not (source / "main.py").is_file() or not (source / "comfy" / "sd1_tokenizer").is_dir():
        raise UserError(f"no ComfyUI at '{source}' (main.py, comfy/sd1_tokenizer). Point ${HOST_ENV} at a ComfyUI "
                        f"checkout and install its packages: pip install -r {HOST_REQUIREMENTS.relative_to(REPOSITORY)} "
                        "-c requirements.txt")
    return source


def install_host(dest: str | os.PathLike, source: str | os.PathLike | None = None) -> Path:
    """A writable copy of the ComfyUI host in ``dest`` with the node linked in, as the README's install command does."""
    dest = Path(dest)
    shutil.copytree(source or host_source(), dest, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    (dest / "custom_nodes").mkdir(exist_ok=True)
    os.symlink(NODE_FOLDER, dest / "custom_nodes" / NODE_LINK_NAME, target_is_directory=True)
    return dest


def add_model(host: Path, folder: str, path: str | os.PathLike, name: str | None = None) -> str:
    """Link a model file or folder into ``host/models/<folder>/``; returns the name ComfyUI lists."""
    target = host / "models" / folder / (name or Path(path).name)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(Path(path).resolve(), target)
    return target.relative_to(host / "models" / folder).as_posix()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


# A sitecustomize under which packages look uninstalled (find_spec None, import ModuleNotFoundError), as in a ComfyUI
# environment without them: Python's path finder stops seeing them.
BLOCK_SITECUSTOMIZE = """
import sys
from importlib.machinery import PathFinder

class _PathFinderWithout(PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        return None if name.split(".")[0] in {blocked!r} else super().find_spec(name, path, target)

sys.meta_path[:] = [_PathFinderWithout if finder is PathFinder else finder for finder in sys.meta_path]
"""


def without_packages_env(folder: Path, packages: tuple[str, ...], env: dict | None = None) -> dict:
    """``env`` (default: this process's) for a Python in which ``packages`` look uninstalled (sitecustomize in ``folder``)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(BLOCK_SITECUSTOMIZE.format(blocked=set(packages)))
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join([str(folder), *filter(None, [env.get("PYTHONPATH")])])
    return env


class ComfyServer:
    """A headless ComfyUI on 127.0.0.1 (on the CPU unless ``cpu=False``), started and stopped by PID; a context manager."""

    def __init__(self, host: Path, port: int | None = None, extra_args: tuple[str, ...] = (), log: Path | None = None,
                 block_packages: tuple[str, ...] = NOT_IN_COMFYUI, env: dict[str, str] | None = None, cpu: bool = True):
        self.host, self.port, self.cpu = Path(host), port or free_port(), cpu
        self.extra_args, self.log = extra_args, log or Path(host) / "server.log"
        self.block_packages, self.extra_env = block_packages, env or {}
        self.process: subprocess.Popen | None = None
        # Loopback only, whatever proxy the environment names.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self, timeout: float = 180.0) -> "ComfyServer":
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
               "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), **self.extra_env}
        if self.block_packages:
            env = without_packages_env(self.host / "_dice_test_site", self.block_packages, env)
        command = [sys.executable, "main.py", *(["--cpu"] if self.cpu else []), "--listen", LOOPBACK, "--port", str(self.port),
                   "--disable-auto-launch", *self.extra_args]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(command, cwd=self.host, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with status {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError):
                self.get("/system_stats")
                return self
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"ComfyUI did not answer on {self.url} within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Terminate the server by its PID (and its process group, which only it is in), then reap it."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> "ComfyServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, chars: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    # ---- the HTTP API, as ComfyUI's own tests use it ---------------------------------------------
    def get(self, path: str) -> Any:
        with self._opener.open(self.url + path, timeout=60) as response:
            return json.loads(response.read())

    def post_prompt(self, graph: dict) -> str:
        """Queue an API-format graph; returns its prompt id (a refused graph raises with ComfyUI's answer)."""
        request = urllib.request.Request(self.url + "/prompt", data=json.dumps({"prompt": graph}).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with self._opener.open(request, timeout=60) as response:
                return json.loads(response.read())["prompt_id"]
        except urllib.error.HTTPError as err:
            raise RuntimeError(f"ComfyUI refused the graph: {err.read().decode(errors='replace')}") from None

    def wait(self, prompt_id: str, timeout: float = 600.0) -> dict:
        """The history entry of a finished prompt (success or error)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None and entry["status"].get("status_str"):
                return entry
            if not self.alive():
                raise RuntimeError(f"ComfyUI died while running {prompt_id}:\n{self.log_tail()}")
            time.sleep(0.2)
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f} s:\n{self.log_tail()}")

    def run(self, graph: dict, timeout: float = 600.0) -> dict:
        return self.wait(self.post_prompt(graph), timeout)

    def output_files(self, entry: dict) -> list[Path]:
        """The files a finished prompt's output nodes wrote (SaveImage, SaveLatent, ...)."""
        found = []
        for output in entry.get("outputs", {}).values():
            for items in output.values():
                for item in items if isinstance(items, list) else []:
                    if isinstance(item, dict) and "filename" in item:
                        found.append(self.host / item.get("type", "output") / item.get("subfolder", "") / item["filename"])
        return found


def messages(entry: dict, kind: str) -> list[dict]:
    """The history entry's status messages of one kind (execution_start, execution_cached, execution_error, ...)."""
    return [data for name, data in entry.get("status", {}).get("messages", []) if name == kind]


def execution_seconds(entry: dict) -> float:
    """Wall time of a prompt's execution, from ComfyUI's own start and end timestamps (milliseconds)."""
    start = messages(entry, "execution_start")[0]["timestamp"]
    end = (messages(entry, "execution_success") or messages(entry, "execution_error"))[0]["timestamp"]
    return (end - start) / 1000


def load_workflow(name: str) -> dict:
    """A shipped API-format example workflow (``comfyui_dice/api_workflows/<name>.json``)."""
    return json.loads((NODE_FOLDER / "api_workflows" / f"{name}.json").read_text())


# ---- random-weight models ComfyUI accepts ------------------------------------------------------
def clip_tokenizer(host: Path, pad_token: str | None = None):
    """The host's CLIP tokenizer in transformers (SDXL's second tokenizer pads with "!")."""
    from transformers import CLIPTokenizer

    kwargs = {"pad_token": pad_token} if pad_token else {}
    return CLIPTokenizer.from_pretrained(str(host / "comfy" / "sd1_tokenizer"), model_max_length=77, **kwargs)


def _clip(config_class, config: dict, tokenizer):
    from transformers import CLIPTextConfig

    return config_class(CLIPTextConfig(**config, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                       pad_token_id=tokenizer.pad_token_id))


def _fp16_values(*modules) -> None:
    """Round every weight to fp16 in place (kept fp32): the fp16 files ComfyUI reads hold exactly these values."""
    with torch.no_grad():
        for module in modules:
            for tensor in [*module.parameters(), *module.buffers()]:
                if tensor.is_floating_point():
                    tensor.copy_(tensor.half().float())


def build_sd15(host: Path, slim: bool = True, seed: int = 0):
    """A random-weight SD1.5 pipeline ComfyUI loads from a single file: full-size VAE and CLIP-L, the UNet slim
    (:data:`SLIM_UNET`: a 573 MB fp16 file) or full size; weights rounded to fp16 values."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = clip_tokenizer(host)
    text_encoder = _clip(CLIPTextModel, SD15_TEXT_CONFIG, tokenizer)
    unet = UNet2DConditionModel(**{**SD15_UNET_CONFIG, **(SLIM_UNET if slim else {})})
    vae = AutoencoderKL(**SD15_VAE_CONFIG)
    _fp16_values(text_encoder, unet, vae)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=PNDMScheduler(**SD15_SCHEDULER_CONFIG), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def write_sd15_checkpoint(pipe, out: str | os.PathLike) -> Path:
    """``pipe`` as the single fp16 file a user puts in ComfyUI/models/checkpoints/."""
    return save_single_file(pipe, out, "sd15", torch.float16)


def build_sdxl_text(host: Path, seed: int = 0):
    """A random-weight SDXL pipeline whose text encoders are full size (CLIP-L, OpenCLIP bigG) and whose UNet and
    VAE are tiny: enough for ``encode_prompt`` and the adapter's text width (the UNet's cross-attention, 2048)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tokenizer, tokenizer_2 = clip_tokenizer(host), clip_tokenizer(host, pad_token="!")
    text_encoder = _clip(CLIPTextModel, SD15_TEXT_CONFIG, tokenizer)
    text_encoder_2 = _clip(CLIPTextModelWithProjection, SDXL_TEXT_2_CONFIG, tokenizer_2)
    _fp16_values(text_encoder, text_encoder_2)
    time_embed = 8
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8), layers_per_block=1, sample_size=16, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=time_embed, transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=6 * time_embed + SDXL_TEXT_2_CONFIG["projection_dim"],
        cross_attention_dim=SD15_TEXT_CONFIG["hidden_size"] + SDXL_TEXT_2_CONFIG["hidden_size"], norm_num_groups=2,
    )
    vae = AutoencoderKL(block_out_channels=[4, 8], down_block_types=["DownEncoderBlock2D"] * 2,
                        up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, norm_num_groups=2, sample_size=32)
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
                                     tokenizer_2=tokenizer_2, unet=unet, scheduler=EulerDiscreteScheduler(),
                                     force_zeros_for_empty_prompt=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# The slim SD3 MMDiT ComfyUI still recognises as SD3 (16 latent channels; its width is 64 per block, as SD3's):
# two blocks of two 64-wide heads, the real text widths (T5's 4096 joint attention, the 2048-wide pooled vector).
SLIM_SD3_TRANSFORMER = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
                            attention_head_dim=64, num_attention_heads=2, joint_attention_dim=4096,
                            caption_projection_dim=128, pooled_projection_dim=2048, pos_embed_max_size=192)


def build_sd3_text(host: Path, seed: int = 0, t5: bool = False, dtype: torch.dtype | None = None):
    """A random-weight SD3 pipeline whose CLIP-L and OpenCLIP bigG are full size, CLIP-L's projection the identity as
    SD3 ships it (diffusers' single-file loader sets the same; ComfyUI reads CLIP-L's pooled output unprojected), with
    the slim MMDiT :data:`SLIM_SD3_TRANSFORMER` and the real SD3 VAE. Without T5 (``text_encoder_3=None``, a stock
    configuration) unless ``t5``: then T5-XXL's real encoder with the host's T5 tokenizer. ``dtype``: every module
    built in it (T5-XXL is 19 GB in fp32); otherwise fp32 with the weights rounded to fp16 values."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection, T5Config, T5EncoderModel, T5TokenizerFast

    torch.manual_seed(seed)
    tokenizer, tokenizer_2 = clip_tokenizer(host), clip_tokenizer(host, pad_token="!")
    tokenizer_3 = T5TokenizerFast.from_pretrained(str(host / "comfy" / "text_encoders" / "t5_tokenizer")) if t5 else None
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype or default_dtype)
    try:
        text_encoder = _clip(CLIPTextModelWithProjection, SD3_CLIP_L_CONFIG, tokenizer)
        with torch.no_grad():
            text_encoder.text_projection.weight.copy_(torch.eye(SD3_CLIP_L_CONFIG["hidden_size"]))
        text_encoder_2 = _clip(CLIPTextModelWithProjection, SD3_CLIP_G_CONFIG, tokenizer_2)
        text_encoder_3 = T5EncoderModel(T5Config(**SD3_T5_CONFIG, pad_token_id=tokenizer_3.pad_token_id,
                                                 eos_token_id=tokenizer_3.eos_token_id, decoder_start_token_id=0)) if t5 else None
        transformer, vae = SD3Transformer2DModel(**SLIM_SD3_TRANSFORMER), AutoencoderKL(**SD3_VAE_CONFIG)
    finally:
        torch.set_default_dtype(default_dtype)
    if dtype is None:
        _fp16_values(*filter(None, (text_encoder, text_encoder_2, text_encoder_3, transformer, vae)))
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER_CONFIG), vae=vae,
        text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
        text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sd3_at_real_widths(t5: bool = True, seed: int = 0):
    """dice's tiny SD3 (:mod:`dice.testkit.tiny`) at SD3's real text widths, which ComfyUI's SD3 conditioning is
    recognised by: CLIP-L 768 and CLIP-G 1280 wide (pooled 2048), T5 4096 wide (or none), two small layers each."""
    from diffusers import SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    pipe = build_tiny_pipeline("sd3", seed=seed)

    def clip(tokenizer, width):
        return CLIPTextModelWithProjection(CLIPTextConfig(
            hidden_size=width, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, projection_dim=width,
            vocab_size=len(tokenizer), max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)).eval()

    width = SD3_T5_CONFIG["d_model"]
    t5_model = T5EncoderModel(T5Config(
        d_model=width, d_kv=8, d_ff=37, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
        vocab_size=len(pipe.tokenizer_3), pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)).eval() if t5 else None
    config = {**pipe.transformer.config, "joint_attention_dim": width,
              "pooled_projection_dim": SD3_CLIP_L_CONFIG["hidden_size"] + SD3_CLIP_G_CONFIG["hidden_size"]}
    pipe.register_modules(text_encoder=clip(pipe.tokenizer, SD3_CLIP_L_CONFIG["hidden_size"]),
                          text_encoder_2=clip(pipe.tokenizer_2, SD3_CLIP_G_CONFIG["hidden_size"]),
                          text_encoder_3=t5_model, tokenizer_3=pipe.tokenizer_3 if t5 else None,
                          transformer=SD3Transformer2DModel.from_config(config))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def write_text_encoders(pipe, folder: str | os.PathLike) -> tuple[Path, Path]:
    """The pipeline's CLIP-L and CLIP-G (SDXL's, SD3's) as the files DualCLIPLoader reads (transformers' names, fp16):
    ``clip_l.safetensors``, ``clip_g.safetensors``."""
    folder = Path(folder)
    return (_save_text_encoder(pipe.text_encoder, folder / "clip_l.safetensors"),
            _save_text_encoder(pipe.text_encoder_2, folder / "clip_g.safetensors"))


def write_sd3_parts(pipe, folder: str | os.PathLike) -> tuple[Path, Path]:
    """The pipeline's MMDiT and VAE as the diffusers-layout files ComfyUI's UNETLoader (models/diffusion_models) and
    VAELoader (models/vae) read, fp16: ``sd3_mmdit.safetensors``, ``sd3_vae.safetensors``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / "sd3_mmdit.safetensors", folder / "sd3_vae.safetensors"
    for module, path in zip((pipe.transformer, pipe.vae), paths):  # small: copied to fp16
        save_file({k: v.detach().half().contiguous() for k, v in module.state_dict().items()}, str(path))
    return paths


def _save_text_encoder(module, path: Path) -> Path:
    """A transformers CLIP text encoder's weights in fp16 under the names ComfyUI reads, cast in place and back (fp16
    values: exact), not copied beside it: bigG is 2.8 GB in fp32."""
    path.parent.mkdir(parents=True, exist_ok=True)
    dtype = module.dtype
    module.to(torch.float16)
    try:
        save_file({k: v.detach().contiguous() for k, v in text_model_keys(module.state_dict()).items()}, str(path))
    finally:
        module.to(dtype)
    return path


def write_random_sharpener(folder: str | os.PathLike, family: str, dim: int, seed: int = 0,
                           family_options: dict | None = None, hub_layout: bool = True) -> Path:
    """A random-initialised sharpener in dice's checkpoint format: an exported folder (model.safetensors +
    config.json) or, ``hub_layout=False``, a training checkpoint's files (sharpener.safetensors + sharpener.json)."""
    torch.manual_seed(seed)
    config = SharpenerConfig(family=family, base_model=f"random-{family}", dim=dim, num_tokens=77,
                             family_options=dict(family_options or {}))
    save_sharpener(folder, Sharpener(dim), config, hub_layout=hub_layout)
    return Path(folder)


# ---- the README's screenshot -------------------------------------------------------------------
def screenshot(out: str | os.PathLike, workflow: str = "dice_sd15", width: int = 1500, height: int = 500) -> Path:
    """ComfyUI's page with the UI-format example workflow loaded, photographed by headless Chromium (via its
    DevTools protocol on loopback); the models the workflow names are empty placeholder files."""
    import aiohttp  # installed with ComfyUI (its server and websockets), not a requirement of this project

    ui = json.loads((NODE_FOLDER / "example_workflows" / f"{workflow}.json").read_text())
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise UserError("no chromium on PATH. Install it: apt-get install chromium")
    with tempfile.TemporaryDirectory(prefix="dice-comfyui-shot-") as tmp:
        host = install_host(Path(tmp) / "ComfyUI")
        for node in ui["nodes"]:  # the file names the widgets show, so that nothing is marked missing
            for folder, value in _model_widgets(node):
                target = host / "models" / folder / value
                target.parent.mkdir(parents=True, exist_ok=True)
                target.touch()
                if folder == "dice":
                    target.with_name("config.json").write_text("{}")
        # A returning user's settings: no first-run template dialog, no minimap or canvas statistics over the graph.
        settings = host / "user" / "default" / "comfy.settings.json"
        settings.parent.mkdir(parents=True, exist_ok=True)
        settings.write_text(json.dumps({"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False,
                                        "Comfy.Graph.CanvasInfo": False}))
        with ComfyServer(host) as server:
            debug_port = free_port()
            browser = subprocess.Popen(
                [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                 f"--remote-debugging-address={LOOPBACK}", f"--remote-debugging-port={debug_port}",
                 f"--window-size={width},{height}", f"--user-data-dir={tmp}/chromium", "about:blank"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            try:
                png = asyncio.run(_photograph(server.url, debug_port, ui, workflow, width, height, aiohttp))
            finally:
                os.killpg(browser.pid, signal.SIGTERM)
                browser.wait(timeout=30)
    Path(out).write_bytes(base64.b64decode(png))
    return Path(out)


def _model_widgets(node: dict):
    names = {"CheckpointLoaderSimple": "checkpoints", "LoadDiceSharpener": "dice"}
    if node["type"] in names:
        yield names[node["type"]], node["widgets_values"][0]
    files = {"DualCLIPLoader": 2, "TripleCLIPLoader": 3}.get(node["type"], 0)  # its first widgets name text encoders
    for value in node.get("widgets_values", [])[:files]:
        yield "text_encoders", value


async def _photograph(url: str, debug_port: int, ui: dict, name: str, width: int, height: int, aiohttp) -> str:
    async with aiohttp.ClientSession(trust_env=False) as session:
        for _ in range(100):
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"http://{LOOPBACK}:{debug_port}/json/list") as response:
                    pages = [p for p in await response.json() if p.get("type") == "page"]
                    if pages:
                        break
            await asyncio.sleep(0.2)
        async with session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            counter = iter(range(1, 10**6))

            async def call(method: str, **params):
                message_id = next(counter)
                await ws.send_json({"id": message_id, "method": method, "params": params})
                async for message in ws:
                    data = json.loads(message.data)
                    if data.get("id") == message_id:
                        if "error" in data:
                            raise RuntimeError(f"{method}: {data['error']}")
                        return data["result"]

            async def evaluate(expression: str):
                result = await call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
                if "exceptionDetails" in result:
                    raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails']}")
                return result["result"].get("value")

            await call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
            await call("Page.navigate", url=url)
            types = json.dumps(sorted({node["type"] for node in ui["nodes"]} - {"Note"}))
            for _ in range(300):  # the page is ready when its graph exists and every node type is registered
                if await evaluate(f"Boolean(window.app && window.app.graph && window.app.canvas && window.LiteGraph && "
                                  f"{types}.every(t => t in LiteGraph.registered_node_types))"):
                    break
                await asyncio.sleep(0.2)
            else:
                raise TimeoutError("ComfyUI's page did not start within 60 s")
            await asyncio.sleep(3.0)  # the page's own start-up (its default graph) settles
            await evaluate(f"window.app.loadGraphData({json.dumps(ui)}, true, true, {json.dumps(name)}).then(() => true)")
            broken = await evaluate("window.app.graph.nodes.filter(n => n.has_errors).map(n => n.type)")
            if broken:
                raise RuntimeError(f"ComfyUI's page could not build these nodes: {broken}")
            await asyncio.sleep(2.0)  # let the canvas draw
            return (await call("Page.captureScreenshot", format="png"))["data"]


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m dice.testkit.comfyui", description="ComfyUI test host tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    shot = commands.add_parser("screenshot", help="photograph ComfyUI's page with an example workflow loaded")
    shot.add_argument("out", help="the PNG to write")
    shot.add_argument("--workflow", default="dice_sd15", help="example_workflows/<name>.json (default dice_sd15)")
    args = parser.parse_args(argv)
    print(f"wrote {screenshot(args.out, args.workflow)}")
    return 0


if __name__ == "__main__":
    with exit_on_user_error():
        sys.exit(main())
