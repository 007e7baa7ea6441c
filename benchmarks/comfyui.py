"""DICE where ComfyUI users see it: KSampler time of the DICE graph at cfg 1 against the stock graph at cfg 5.

The same checkpoint, prompt, sampler, steps and resolution in a real ComfyUI (the test host, dice.testkit.comfyui):

* ``dice``: CheckpointLoaderSimple -> CLIPTextEncode x2 -> Load + Apply DICE Sharpener -> KSampler at cfg 1.0
  (ComfyUI then skips the unconditional evaluation: 1 UNet evaluation per step);
* ``cfg``: the stock graph, the prompt's conditioning straight into KSampler at cfg 5.0 (2 evaluations per step).

The shipped example workflow with SaveLatent as its output (no VAE decode in the time). After one warm-up run of each
arm (model loading, text encoding, the sharpener), every timed run changes only the seed, so ComfyUI re-executes only
KSampler and SaveLatent (checked against its execution_cached list); the time is ComfyUI's own, from the history's
execution_start to execution_success. Arms are interleaved, the order alternating per round. The model is the real
SD1.5 architecture with random weights (2.1 GB fp16 file; speed does not depend on the weights). The apply node's
own cost is timed in-process on tensors of the same shapes.

    flock /tmp/dice-bigmem.lock python benchmarks/comfyui.py          # CPU, 256 px, 20 steps, 3 rounds
    python benchmarks/comfyui.py --device cuda --resolution 512 --rounds 5
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import common  # noqa: E402
from dice.comfyui import load_for_comfyui, sharpen_conditioning  # noqa: E402
from dice.testkit import comfyui as host_tools  # noqa: E402


def graphs(checkpoint: str, sharpener: str, resolution: int, steps: int, cfg: float) -> dict[str, dict]:
    """The two arms from the shipped SD1.5 example workflow, ending in SaveLatent."""
    dice = host_tools.load_workflow("dice_sd15")
    dice["1"]["inputs"]["ckpt_name"] = checkpoint
    dice["4"]["inputs"]["sharpener_name"] = sharpener
    dice["6"]["inputs"].update(width=resolution, height=resolution)
    dice["7"]["inputs"]["steps"] = steps
    del dice["8"], dice["9"]
    dice["8"] = {"class_type": "SaveLatent", "inputs": {"samples": ["7", 0], "filename_prefix": "benchmark"}}
    stock = {k: v for k, v in dice.items() if k not in ("4", "5")}
    stock["7"] = {**dice["7"], "inputs": {**dice["7"]["inputs"], "positive": ["2", 0], "cfg": cfg}}
    assert dice["7"]["inputs"]["cfg"] == 1.0
    return {"dice": dice, "cfg": stock}


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cpu: ComfyUI --cpu; cuda: its default GPU mode")
    p.add_argument("--resolution", type=int, default=256, help="image side in pixels")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=5.0, help="the stock graph's guidance scale (the paper's w)")
    p.add_argument("--rounds", type=int, default=3, help="timed runs per arm")
    p.add_argument("--threads", type=int, default=1, help="CPU threads of ComfyUI's torch (OMP_NUM_THREADS)")
    p.add_argument("--slim", action="store_true", help="the slim UNet of the tests instead of the full SD1.5 UNet")
    p.add_argument("--tag", default=None)
    p.add_argument("--out", default=os.environ.get("OUT"), help="also write the JSON here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="dice-comfyui-bench-") as tmp:
        host = host_tools.install_host(Path(tmp) / "ComfyUI")
        pipe = host_tools.build_sd15(host, slim=args.slim)
        unet_parameters = sum(t.numel() for t in pipe.unet.parameters())
        checkpoint = host_tools.add_model(host, "checkpoints", host_tools.write_sd15_checkpoint(pipe, Path(tmp) / "sd15.safetensors"))
        del pipe
        gc.collect()
        folder = host_tools.write_random_sharpener(Path(tmp) / "dice-sd15", "sd15", 768)
        sharpener = f"{host_tools.add_model(host, 'dice', folder)}/model.safetensors"
        loaded = load_for_comfyui(folder, "exps")
        arms = graphs(checkpoint, sharpener, args.resolution, args.steps, args.cfg)
        # An LRU cache keeps both arms' unchanged nodes, as one graph's are kept when a user reruns it with a new seed.
        server = host_tools.ComfyServer(host, cpu=args.device == "cpu", extra_args=("--cache-lru", "32"),
                                        env={"OMP_NUM_THREADS": str(args.threads)})
        seconds: dict[str, list[float]] = {arm: [] for arm in arms}
        warmup: dict[str, float] = {}
        with server:
            for arm, graph in arms.items():
                entry = server.run(graph, timeout=7200)
                assert entry["status"]["status_str"] == "success", server.log_tail()
                warmup[arm] = round(host_tools.execution_seconds(entry), 3)
            for round_index in range(args.rounds):
                order = list(arms) if round_index % 2 == 0 else list(arms)[::-1]
                for arm in order:
                    graph = {k: {**v, "inputs": dict(v["inputs"])} for k, v in arms[arm].items()}
                    graph["7"]["inputs"]["seed"] = 1000 + round_index
                    entry = server.run(graph, timeout=7200)
                    assert entry["status"]["status_str"] == "success", server.log_tail()
                    cached = {n for data in host_tools.messages(entry, "execution_cached") for n in data["nodes"]}
                    assert cached == set(graph) - {"7", "8"}, f"more than KSampler and SaveLatent ran: {cached}"
                    seconds[arm].append(host_tools.execution_seconds(entry))
                    print(f"round {round_index} {arm}: {seconds[arm][-1]:.2f} s (load {load_average()})", file=sys.stderr)
        comfyui_version = (host / "comfyui_version.py").read_text().split('"')[1]
    # The apply node's own work, in-process on ComfyUI's SD1.5 shapes (a one-chunk prompt, u the empty prompt).
    conditioning = [[torch.randn(1, 77, 768), {"pooled_output": torch.randn(1, 768)}]]
    apply_times = []
    for _ in range(10):
        start = time.perf_counter()
        sharpen_conditioning(loaded, conditioning, conditioning)
        apply_times.append(time.perf_counter() - start)
    medians = {arm: statistics.median(values) for arm, values in seconds.items()}
    result = {
        "benchmark": "comfyui",
        "setup": "sd15-slim" if args.slim else "sd15-full",
        "what": "KSampler time in a real ComfyUI: the DICE graph at cfg 1 (sharpened positive, 1 UNet evaluation per step) "
                f"vs the stock graph at cfg {args.cfg} (2 per step), same checkpoint, prompt, seed, sampler and steps",
        "comfyui": comfyui_version,
        **common.environment(device),
        "comfyui_torch_threads": args.threads,
        "unet_parameters": unet_parameters,
        "resolution": args.resolution,
        "steps": args.steps,
        "sampler": arms["dice"]["7"]["inputs"]["sampler_name"],
        "scheduler": arms["dice"]["7"]["inputs"]["scheduler"],
        "rounds": args.rounds,
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "warmup_run_seconds": warmup,
        "ksampler_seconds": {arm: common.summarize(values) for arm, values in seconds.items()},
        "ksampler_seconds_per_step": {arm: round(m / args.steps, 4) for arm, m in medians.items()},
        "cfg_over_dice": round(medians["cfg"] / medians["dice"], 3),
        "apply_node_seconds": common.summarize(apply_times),
        "apply_node_share_of_dice_ksampler": round(statistics.median(apply_times) / medians["dice"], 6),
        "notes": ["Timed runs re-execute only KSampler and SaveLatent (ComfyUI's cache holds the rest); the apply "
                  "node runs once per prompt, not per step."],
    }
    if device.type == "cpu":
        result["notes"].append(common.CPU_NOTE.replace("torch used 1 CPU thread (--threads)",
                                                       f"ComfyUI's torch used {args.threads} CPU thread(s) (--threads)"))
    common.write_result("comfyui", result["setup"], device, result, args.out, args.tag)
    return result


if __name__ == "__main__":
    main()
