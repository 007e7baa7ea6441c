"""The DICE node in a real ComfyUI (slow tier): the host ComfyUI copied to a temporary folder, the node linked into
custom_nodes/ as the README says, a headless server on a free port of 127.0.0.1 started and stopped by PID, with
diffusers and accelerate uninstalled as in a ComfyUI environment (dice.testkit.comfyui).

(1) the SD1.5 example workflow runs to a saved image at cfg 1 on a random-weight single-file SD1.5 (slim UNet,
full-size VAE and CLIP-L), the node listed in /object_info and executed, the image different from the same graph
without the node; so does the SD3 example workflow on a random-weight SD3 checkpoint (slim MMDiT, the real VAE) with
CLIP-L/G and no T5; (2) the node's output equals this repository's own sharpened embedding (diffusers' encode_prompt
through the family adapter + the sharpener, the path dice.apply takes) for the same weights, prompts and sharpener,
within 1e-4, for SD1.5, SDXL and SD3 without T5 (ComfyUI's DualCLIPLoader on full-size random CLIP-L / CLIP-G), a
prompt longer than 77 tokens included; (3) a mismatched sharpener (an SDXL one on SD1.5, a PixArt one on SD3) gives
one line in ComfyUI's error and the next prompt still runs.
The host's extra packages: tests/comfyui_host_requirements.txt (.ci/run installs them).
"""
from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from dice.adapters.sd3 import SD3Adapter
from dice.adapters.sd15 import SD15Adapter
from dice.adapters.sdxl import SDXLAdapter
from dice.checkpoint import load_sharpener
from dice.methods.dice import sharpen_for_pipeline
from dice.testkit import comfyui as host_tools
from test_hub import add_to_hub_cache

pytestmark = pytest.mark.slow
TOLERANCE = 1e-4
CLIP_TOKENS = 77
PROMPT = "a photo of a red cat sitting on a wooden table"
# 100 words of one CLIP token each: ComfyUI encodes them as two chunks (75 + 25 tokens between BOS and EOS).
WORKFLOWS = ("dice_sd15", "dice_sd3", "dice_sdxl")
LONG_WORDS = ("red green blue cat dog house tree car boat bird small big photo painting table chair street field sky "
              "flower").split() * 5


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    return host_tools.install_host(tmp_path_factory.mktemp("comfyui") / "ComfyUI")


@pytest.fixture(scope="module")
def sd15(host, tmp_path_factory):
    """A slim random SD1.5 as a single file in models/checkpoints, its pipeline, and sharpeners in models/dice."""
    models = tmp_path_factory.mktemp("models")
    pipe = host_tools.build_sd15(host, slim=True)
    checkpoint = host_tools.add_model(host, "checkpoints", host_tools.write_sd15_checkpoint(pipe, models / "dice-test-sd15.safetensors"))
    sharpener = host_tools.add_model(host, "dice", host_tools.write_random_sharpener(models / "dice-sd15", "sd15", 768, seed=1))
    host_tools.add_model(host, "dice", host_tools.write_random_sharpener(models / "dice-sdxl", "sdxl", 2048, seed=2))
    return {"pipe": pipe, "checkpoint": checkpoint, "sharpener": f"{sharpener}/model.safetensors", "models": models}


@pytest.fixture(scope="module")
def hub_home(sd15, tmp_path_factory):
    """A Hugging Face cache holding the SD1.5 sharpener as the Hub repository someone/dice-sd15 (the server is offline)."""
    home = tmp_path_factory.mktemp("hf_home")
    add_to_hub_cache(home / "hub", "someone/dice-sd15", sd15["models"] / "dice-sd15")
    return home


@pytest.fixture(scope="module")
def server(host, sd15, hub_home):
    with host_tools.ComfyServer(host, env={"HF_HOME": str(hub_home)}) as running:
        yield running


def example_graph(name: str, models: dict, **changes) -> dict:
    """The shipped example workflow ``name`` on the test checkpoint and sharpener in ``models``, at 64 px and 2 steps
    (the CPU's budget); ``changes``: node id -> inputs."""
    graph = host_tools.load_workflow(name)
    assert graph["7"]["inputs"]["cfg"] == 1.0 and graph["7"]["inputs"]["positive"] == ["5", 0]
    graph["1"]["inputs"]["ckpt_name"] = models["checkpoint"]
    graph["4"]["inputs"]["sharpener_name"] = models["sharpener"]
    graph["6"]["inputs"].update(width=64, height=64)
    graph["7"]["inputs"]["steps"] = 2
    for node, inputs in changes.items():
        graph[node]["inputs"].update(inputs)
    return graph


def sd15_graph(sd15, **changes) -> dict:
    return example_graph("dice_sd15", sd15, **changes)


def without_node(graph: dict) -> dict:
    """The same graph with the prompt's conditioning wired straight to KSampler."""
    graph = {k: v for k, v in graph.items() if k not in ("4", "5")}
    graph["7"]["inputs"]["positive"] = ["2", 0]
    return graph


def image_of(server, entry) -> np.ndarray:
    assert entry["status"]["status_str"] == "success", entry["status"]
    (path,) = server.output_files(entry)
    return np.asarray(Image.open(path), dtype=np.int16)


def test_the_nodes_are_listed_with_tooltips(server, sd15):
    info = server.get("/object_info")
    for name in ("LoadDiceSharpener", "LoadDiceSharpenerFromPath", "ApplyDiceSharpener"):
        assert name in info, f"{name} not in /object_info:\n{server.log_tail()}"
    apply_inputs = info["ApplyDiceSharpener"]["input"]["required"]
    assert list(apply_inputs) == ["sharpener", "positive", "u", "strength"]
    assert "empty prompt" in apply_inputs["u"][1]["tooltip"] and "KSampler's negative" in apply_inputs["u"][1]["tooltip"]
    # Only weights with their config beside them are offered (not the JSON, not a stray file).
    assert info["LoadDiceSharpener"]["input"]["required"]["sharpener_name"][0] == ["dice-sd15/model.safetensors",
                                                                                  "dice-sdxl/model.safetensors"]


def check_the_node_runs_and_changes_the_image(server, graph) -> None:
    """``graph(**changes)``, an example workflow at 64 px, runs at cfg 1 with the DICE nodes executed; its image
    differs from the graph without them, and at strength 0 equals it."""
    entry = server.run(graph())
    with_dice = image_of(server, entry)
    assert with_dice.shape == (64, 64, 3)
    cached = {node for data in host_tools.messages(entry, "execution_cached") for node in data["nodes"]}
    assert not {"4", "5"} & cached, "the DICE nodes were not executed"
    plain = image_of(server, server.run(without_node(graph())))
    # Random weights: the model reads its text weakly, yet the sharpened conditioning changes pixels (SD1.5, measured:
    # 0.3 levels of 255 on average); strength 0 gives the prompt's own conditioning back: the image without the node.
    assert not np.array_equal(with_dice, plain), "the sharpened conditioning did not change the image"
    zero = image_of(server, server.run(graph(**{"5": {"strength": 0.0}})))
    assert np.array_equal(zero, plain)


def check_a_mismatch_is_one_line_and_the_server_goes_on(server, graph, sharpener_name: str, *needles: str) -> None:
    """``graph(**changes)`` with another family's sharpener stops at the apply node with one line naming both
    families; the next prompt on the same server runs."""
    entry = server.run(graph(**{"4": {"sharpener_name": sharpener_name}}))
    assert entry["status"]["status_str"] == "error"
    (error,) = host_tools.messages(entry, "execution_error")
    assert error["node_type"] == "ApplyDiceSharpener" and error["exception_type"].endswith("SharpenerMismatch")
    message = error["exception_message"].strip()
    assert "\n" not in message and all(needle in message for needle in needles), message
    assert server.alive()
    assert server.run(graph(**{"7": {"seed": 1}}))["status"]["status_str"] == "success"


def test_sd15_example_workflow_runs_at_cfg_1_and_the_node_changes_the_image(server, sd15):
    check_the_node_runs_and_changes_the_image(server, lambda **changes: sd15_graph(sd15, **changes))


def test_a_mismatched_sharpener_is_one_line_in_the_error_and_the_server_goes_on(server, sd15):
    check_a_mismatch_is_one_line_and_the_server_goes_on(server, lambda **changes: sd15_graph(sd15, **changes),
                                                        "dice-sdxl/model.safetensors", "trained for sdxl", "sd15")


def test_the_path_loader_takes_a_folder_and_a_hub_id_from_the_cache(server, sd15):
    for source in (str(sd15["models"] / "dice-sd15"), "someone/dice-sd15"):
        graph = sd15_graph(sd15, **{"7": {"seed": 2}})
        graph["4"] = {"class_type": "LoadDiceSharpenerFromPath", "inputs": {"source": source, "revision": ""}}
        assert server.run(graph)["status"]["status_str"] == "success", (source, server.log_tail())
    graph["4"]["inputs"]["source"] = "someone/not-downloaded"
    (error,) = host_tools.messages(server.run(graph), "execution_error")
    assert "HF_HUB_OFFLINE=1" in error["exception_message"] and "\n" not in error["exception_message"].strip()


def test_a_training_run_is_loaded_again_when_it_saves_a_newer_checkpoint(server, sd15, tmp_path):
    run = tmp_path / "00000-sd15"
    host_tools.write_random_sharpener(run / "checkpoint-10", "sd15", 768, seed=5, hub_layout=False)
    graph = sd15_graph(sd15, **{"7": {"seed": 3}})
    graph["4"] = {"class_type": "LoadDiceSharpenerFromPath", "inputs": {"source": str(run), "revision": ""}}
    first = image_of(server, server.run(graph))
    host_tools.write_random_sharpener(run / "checkpoint-20", "sd15", 768, seed=6, hub_layout=False)
    newer = image_of(server, server.run(graph))  # the same graph: only the run's latest checkpoint moved on
    assert not np.array_equal(first, newer)


def test_the_ui_workflows_are_the_api_workflows(server):
    """Each example workflow for ComfyUI's page (example_workflows/, listed among its templates) is the API-format
    graph the tests run: the same nodes, links and widget values."""
    info = server.get("/object_info")
    templates = server.get("/workflow_templates")
    assert sorted(templates[host_tools.NODE_LINK_NAME]) == list(WORKFLOWS)
    for name in WORKFLOWS:
        ui = json.loads((host_tools.NODE_FOLDER / "example_workflows" / f"{name}.json").read_text())
        assert ui_to_api(ui, info) == host_tools.load_workflow(name), name


def ui_to_api(ui: dict, info: dict) -> dict:
    """An API-format graph from a UI-format workflow: links become [node, slot], widgets take the inputs' order."""
    links = {link[0]: link for link in ui["links"]}
    graph = {}
    for node in ui["nodes"]:
        if node["type"] == "Note":  # the page's own, not part of the graph
            continue
        spec = info[node["type"]]
        linked = {slot["name"]: [str(links[slot["link"]][1]), links[slot["link"]][2]]
                  for slot in node.get("inputs", []) if slot.get("link") is not None}
        widgets = iter(node.get("widgets_values", []))
        inputs = {}
        for name in spec["input_order"]["required"] + spec["input_order"].get("optional", []):
            if name in linked:
                inputs[name] = linked[name]
                continue
            kind = (spec["input"]["required"] | spec["input"].get("optional", {}))[name][0]
            if isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"):
                inputs[name] = next(widgets)
                if name in ("seed", "noise_seed"):
                    next(widgets)  # the page's "control after generate" widget
        graph[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return graph


# ---- (2) the node's tensor against this repository's own ------------------------------------------------------
def comfyui_encode(host: Path, spec: dict, out: Path) -> tuple[dict, list]:
    """Conditionings as ComfyUI's own nodes and the DICE nodes make them, in a process like the server's."""
    (out.parent / "spec.json").write_text(json.dumps(spec))
    env = host_tools.without_packages_env(out.parent / "site", host_tools.NOT_IN_COMFYUI)
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("comfyui_encode.py")), str(out.parent / "spec.json"),
                           str(out)], cwd=host, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return load_file(str(out)), json.loads(Path(str(out) + ".json").read_text())


def ours(adapter, sharpener, prompt_chunks: list[str], strength: float):
    """(raw, sharpened, pooled, sharpened pooled, u) as dice.apply makes them: the adapter's encoding of each 77-token
    chunk's text, the empty prompt as u, sharpen_for_pipeline; the chunks side by side as ComfyUI joins them. SD3
    without T5: diffusers' zero T5 tokens after the CLIP tokens, which ComfyUI leaves out, stay zero and are cut."""
    uncond = adapter.encode_negative([""])
    raw, sharpened = [], []
    for text in prompt_chunks:
        cond = adapter.encode_prompts([text])
        dice_cond = sharpen_for_pipeline(adapter, cond, uncond, sharpener, strength)[0]
        assert (cond.embeds[:, CLIP_TOKENS:] == 0).all() and (dice_cond.embeds[:, CLIP_TOKENS:] == 0).all()
        raw.append(cond.embeds[:, :CLIP_TOKENS])
        sharpened.append(dice_cond.embeds[:, :CLIP_TOKENS])
        if len(raw) == 1:
            pooled, dice_pooled = cond.pooled, dice_cond.pooled
    assert (uncond.embeds[:, CLIP_TOKENS:] == 0).all()
    return torch.cat(raw, dim=1), torch.cat(sharpened, dim=1), pooled, dice_pooled, uncond.embeds[:, :CLIP_TOKENS]


def assert_close(name: str, theirs: torch.Tensor, mine: torch.Tensor) -> float:
    assert theirs.shape == mine.shape, (name, theirs.shape, mine.shape)
    error = (theirs.float() - mine.float()).abs().max().item()
    assert error <= TOLERANCE, f"{name}: max |ComfyUI - dice| = {error:.2e} > {TOLERANCE}"
    return error


def compare_family(host, adapter, sharpener_path, spec, tmp_path, strength):
    sharpener, config = load_sharpener(sharpener_path)
    tokenizer = adapter.pipe.tokenizer
    assert all(len(tokenizer.tokenize(word)) == 1 for word in LONG_WORDS), "a long word is not one CLIP token"
    prompts = {PROMPT: [PROMPT], " ".join(LONG_WORDS): [" ".join(LONG_WORDS[:75]), " ".join(LONG_WORDS[75:])]}
    expected = [ours(adapter, sharpener, chunks, strength) for chunks in prompts.values()]
    del adapter.pipe, adapter
    gc.collect()  # only ComfyUI's copy of the text encoders in memory from here
    tensors, carried = comfyui_encode(host, {**spec, "prompts": list(prompts), "u": "", "strength": strength},
                                      tmp_path / "comfyui.safetensors")
    errors = {}
    for index, (raw, sharpened, pooled, dice_pooled, u) in enumerate(expected):
        errors[f"raw_{index}"] = assert_close(f"raw {index}", tensors[f"raw_{index}"], raw)
        errors[f"dice_{index}"] = assert_close(f"sharpened {index}", tensors[f"dice_{index}"], sharpened)
        # The node changed the embedding by far more than the tolerance, and carried every dict entry over untouched
        # (the pooled vector too, unless the family's rule rewrites it: SD3).
        assert (sharpened - raw).abs().max() > 100 * TOLERANCE
        assert carried[index] == {"entries": 1, "keys": True, "same_values": True, "pooled_kept": dice_pooled is pooled}
        if pooled is not None:
            errors[f"pooled_{index}"] = assert_close(f"pooled {index}", tensors[f"pooled_{index}"], pooled)
        if dice_pooled is not pooled:
            errors[f"dice_pooled_{index}"] = assert_close(f"sharpened pooled {index}", tensors[f"dice_pooled_{index}"],
                                                          dice_pooled)
            assert (dice_pooled - pooled).abs().max() > 100 * TOLERANCE
    errors["u"] = assert_close("u", tensors["u"], expected[0][4])
    assert tensors["dice_1"].shape[1] == 154  # two chunks of 77
    print(json.dumps({k: f"{v:.2e}" for k, v in errors.items()}))


def test_sd15_node_output_equals_our_sharpened_embedding(host, sd15, tmp_path):
    adapter = SD15Adapter(sd15.pop("pipe"), "random-sd15")
    compare_family(host, adapter, sd15["models"] / "dice-sd15",
                   {"clip": {"checkpoint": sd15["checkpoint"]}, "sharpener": sd15["sharpener"]}, tmp_path, strength=1.3)


def test_sdxl_node_output_equals_our_sharpened_embedding(host, tmp_path):
    """Full-size random CLIP-L and OpenCLIP bigG text encoders (3.3 GB in fp32 here, then ComfyUI's own copy)."""
    pipe = host_tools.build_sdxl_text(host, seed=3)
    clip_l, clip_g = host_tools.write_text_encoders(pipe, tmp_path / "text_encoders")
    names = [host_tools.add_model(host, "text_encoders", path, f"dice-test-{path.name}") for path in (clip_l, clip_g)]
    sharpener = host_tools.write_random_sharpener(tmp_path / "dice-sdxl-test", "sdxl", 2048, seed=4,
                                                  family_options={"empty_prompt": "encoded"})
    name = host_tools.add_model(host, "dice", sharpener)
    adapter = SDXLAdapter(pipe, "random-sdxl", {"empty_prompt": "encoded"})
    del pipe
    compare_family(host, adapter, sharpener, {"clip": {"dual_clip": names, "type": "sdxl"},
                                              "sharpener": f"{name}/model.safetensors"}, tmp_path, strength=1.0)


# ---- SD3 / SD3.5 without T5 (T5-XXL is 19 GB in fp32: beyond this machine) --------------------------------------
@pytest.fixture(scope="module")
def sd3(host, tmp_path_factory):
    """A random-weight SD3 without T5: full-size CLIP-L and OpenCLIP bigG in models/text_encoders, the slim MMDiT and
    the real VAE as one checkpoint in models/checkpoints written by ComfyUI itself (as Stability ships SD3.5: no text
    encoders in it), its diffusers pipeline, and an SD3 sharpener (the pipeline's 256 T5 tokens) in models/dice."""
    models = tmp_path_factory.mktemp("sd3")
    pipe = host_tools.build_sd3_text(host, seed=5)
    clip = [host_tools.add_model(host, "text_encoders", path, f"dice-test-sd3-{path.name}")
            for path in host_tools.write_text_encoders(pipe, models / "text_encoders")]
    mmdit, vae = host_tools.write_sd3_parts(pipe, models / "parts")
    checkpoint = models / "dice-test-sd3.safetensors"
    env = host_tools.without_packages_env(models / "site", host_tools.NOT_IN_COMFYUI)
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("comfyui_save_checkpoint.py")), str(mmdit),
                           str(vae), str(checkpoint)], cwd=host, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("SD3"), proc.stdout[-3000:] + proc.stderr[-5000:]
    sharpener = host_tools.write_random_sharpener(models / "dice-sd3", "sd3", 4096, seed=6,
                                                  family_options={"max_sequence_length": 256, "pooled_embedding": "sharpen"})
    # A PixArt sharpener (4096 wide too, and trained with the options ComfyUI's T5 conditioning fits): the wrong family.
    pixart = host_tools.write_random_sharpener(models / "dice-pixart", "pixart", 4096, seed=7,
                                               family_options={"pixart_mask": "prompt", "pixart_context_mask": "prompt"})
    return {"pipe": pipe, "clip": clip, "checkpoint": host_tools.add_model(host, "checkpoints", checkpoint),
            "sharpener_path": sharpener, "sharpener": f"{host_tools.add_model(host, 'dice', sharpener)}/model.safetensors",
            "pixart_sharpener": f"{host_tools.add_model(host, 'dice', pixart)}/model.safetensors"}


def test_sd3_without_t5_node_output_equals_our_sharpened_embedding(host, sd3, tmp_path):
    """ComfyUI's DualCLIPLoader (type sd3) on the CLIP-L/G files: 77 tokens per chunk where diffusers appends 256
    zero tokens for the absent T5; the node puts them back into u, so its tokens and its sharpened pooled vector equal
    the library's. The raw conditionings agree too (CLIP-L's pooled output unprojected = SD3's identity projection)."""
    adapter = SD3Adapter(sd3.pop("pipe"), "random-sd3", {"max_sequence_length": 256, "pooled_embedding": "sharpen"})
    assert adapter.pipe.text_encoder_3 is None
    compare_family(host, adapter, sd3["sharpener_path"], {"clip": {"dual_clip": sd3["clip"], "type": "sd3"},
                                                          "sharpener": sd3["sharpener"]}, tmp_path, strength=1.0)


def sd3_graph(sd3, **changes) -> dict:
    """The shipped SD3 example workflow on the test checkpoint, its TripleCLIPLoader swapped for a DualCLIPLoader of
    CLIP-L/G (no T5 here), at 64 px and 2 steps."""
    graph = example_graph("dice_sd3", sd3, **changes)
    assert graph["11"]["class_type"] == "TripleCLIPLoader" and graph["12"]["inputs"]["min_length"] == 256
    graph["11"] = {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": sd3["clip"][0], "clip_name2": sd3["clip"][1],
                                                              "type": "sd3"}}
    return graph


def test_sd3_example_workflow_runs_at_cfg_1_and_the_node_changes_the_image(server, sd3):
    check_the_node_runs_and_changes_the_image(server, lambda **changes: sd3_graph(sd3, **changes))


def test_a_pixart_sharpener_on_sd3_conditioning_is_one_line_and_the_server_goes_on(server, sd3):
    """Both are 4096 wide: the family is told by the pooled vector (SD3 has one, PixArt none)."""
    check_a_mismatch_is_one_line_and_the_server_goes_on(server, lambda **changes: sd3_graph(sd3, **changes),
                                                        sd3["pixart_sharpener"], "trained for pixart", "sd3")
