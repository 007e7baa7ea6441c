"""Quality sweeps over sample.py + the evaluators (paper Fig. 5, 8/14, 16, 17 and the A.1 structure ablation).

* ``nfe``: quality vs the number of network evaluations, DICE (NFE = steps) against CFG (NFE = 2·steps)
  at equal NFE (Fig. 5).
* ``alpha``: the sharpener's strength α at sampling time (Fig. 8 / 14); α = 0 is unguided sampling.
* ``dice_cfg``: CFG alone and DICE + CFG over the guidance scale w (Fig. 17, paper A.5).
* ``training``: every checkpoint of an experiment (Fig. 16); step 0 is the base model unguided.
* ``samples``: every checkpoint of several runs, any method, against the training samples seen.
* ``structure``: sharpeners of other widths / head counts (A.1: "insensitive to model structure"),
  each trained with ``--sharpener_inner_dim`` / ``--sharpener_heads`` (or given as experiments).
Each point is one sample folder; unguided and CFG (w of the sharpener's training) are drawn as references.
"""
from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from dice.checkpoint import load_sharpener, read_config, resolve_sharpener_files, resolve_trained_config
from dice.errors import UserError, finite_float, guidance_scale, positive_int
from dice.experiments import checkpoint_step, list_checkpoints, resolve_run
from dice.options import build_parser
from dice.runtime import quiet_threads
from dice.training import main as train_main
from evaluation.metrics.guidance_gap import gain_recovered, gain_recovered_interval
from evaluation.plotting import write_figure

from .common import Driver, parser, plot_series


def _trained_guidance(sharpener: str, exps_root: str) -> float:
    config = read_config(resolve_sharpener_files(sharpener, exps_root)[1])
    return float(config.training_options.get("guidance_scale", 5.0))


def _references(driver: Driver, sharpener: str, steps: int, w: float) -> dict[str, dict]:
    base = ["--sharpener_path", sharpener, "--alpha", "0", "--steps", str(steps)]
    return {"unguided": _point(driver, base, 0)[1], f"CFG w={w:g}": _point(driver, base + ["--cfg_scale", f"{w:g}"], 0)[1]}


def _point(driver: Driver, argv: list[str], x: float) -> tuple[float, dict]:
    folder = driver.sample(argv)
    return x, {**driver.score(folder), "folder": str(folder)}


def nfe_sweep(driver: Driver, sharpener: str, nfes: list[int], cfg_scale: float | None = None) -> dict:
    """DICE with NFE steps and CFG with NFE/2 steps (odd NFE: no CFG point), same prompts and seeds."""
    w = cfg_scale or _trained_guidance(sharpener, driver.exps_root)
    series = {"DICE (1 NFE/step)": [], f"CFG w={w:g} (2 NFE/step)": []}
    for nfe in nfes:
        series["DICE (1 NFE/step)"].append(_point(driver, ["--sharpener_path", sharpener, "--steps", str(nfe)], nfe))
        if nfe % 2 == 0:
            argv = ["--sharpener_path", sharpener, "--alpha", "0", "--cfg_scale", f"{w:g}", "--steps", str(nfe // 2)]
            series[f"CFG w={w:g} (2 NFE/step)"].append(_point(driver, argv, nfe))
    data = {"figure": "Fig. 5: quality vs NFE", "sharpener": sharpener, "cfg_scale": w, "series": series}
    return write_figure(driver.out, "quality_vs_nfe", data, lambda png: plot_series(
        png, series, driver.columns, "NFE (network evaluations per image)", "DICE vs CFG at equal NFE (paper Fig. 5)"))


def alpha_sweep(driver: Driver, sharpener: str, alphas: list[float], steps: int = 20) -> dict:
    w = _trained_guidance(sharpener, driver.exps_root)
    series = {"DICE": [_point(driver, ["--sharpener_path", sharpener, "--alpha", f"{a:g}", "--steps", str(steps)], a)
                       for a in alphas]}
    references = _references(driver, sharpener, steps, w)
    data = {"figure": "Fig. 8/14: strength alpha", "sharpener": sharpener, "steps": steps, "series": series, "references": references}
    return write_figure(driver.out, "alpha_sweep", data, lambda png: plot_series(
        png, series, driver.columns, "strength α (1 = as trained; 0 = unguided)", "DICE strength sweep (paper Fig. 8 / 14)", references))


def dice_cfg_sweep(driver: Driver, sharpener: str, scales: list[float], steps: int = 20) -> dict:
    series = {"CFG": [], "DICE + CFG": []}
    for w in scales:
        base = ["--sharpener_path", sharpener, "--cfg_scale", f"{w:g}", "--steps", str(steps)]
        series["CFG"].append(_point(driver, base + ["--alpha", "0"], w))
        series["DICE + CFG"].append(_point(driver, base, w))
    data = {"figure": "Fig. 17: DICE combined with CFG", "sharpener": sharpener, "steps": steps, "series": series}
    return write_figure(driver.out, "dice_cfg_sweep", data, lambda png: plot_series(
        png, series, driver.columns, "guidance scale w (1 = no CFG)", "CFG and DICE + CFG (paper Fig. 17)"))


def training_curve(driver: Driver, experiment: str, steps: int = 20) -> dict:
    run = resolve_run(experiment, driver.exps_root)
    checkpoints = list_checkpoints(run)
    if not checkpoints:
        raise UserError(f"experiment '{run}' has no checkpoint-<step> folder yet. Train it first (or wait for its first checkpoint)")
    w = _trained_guidance(str(run), driver.exps_root)
    references = _references(driver, str(checkpoints[-1]), steps, w)
    points = [(0, references["unguided"])]  # step 0: a zero residual, i.e. the base model unguided
    points += [_point(driver, ["--sharpener_path", str(c), "--steps", str(steps)], checkpoint_step(c)) for c in checkpoints]
    series = {"DICE": points}
    data = {"figure": "Fig. 16: quality vs training step", "experiment": str(run), "steps": steps, "series": series,
            "references": {k: v for k, v in references.items() if k != "unguided"}}
    return write_figure(driver.out, "training_curve", data, lambda png: plot_series(
        png, series, driver.columns, "training step (updates)", f"DICE during training of {run.name} (paper Fig. 16)",
        data["references"]))


def samples_curve(driver: Driver, runs: list[str], labels: list[str] | None = None, steps: int = 20,
                  ceiling: str | None = None) -> dict:
    """Quality of every checkpoint of several runs (any method) against the training samples it has seen
    (updates x global batch): do methods trained on the same data converge, and how fast? GD and PnP
    are sampled at ω = 5, DICE unguided. ``ceiling``: an embedding_ceiling.json whose best point is drawn."""
    if labels and len(labels) != len(runs):
        raise UserError(f"--labels gives {len(labels)} names for {len(runs)} --runs. Give one per run, or none")
    series, first_checkpoint = {}, None
    for k, experiment in enumerate(runs):
        run = resolve_run(experiment, driver.exps_root)
        checkpoints = list_checkpoints(run)
        if not checkpoints:
            raise UserError(f"experiment '{run}' has no checkpoint-<step> folder yet. Train it first")
        config = read_config(resolve_trained_config(str(checkpoints[-1]), driver.exps_root))
        batch = int(config.training_options.get("global_batch_size", 1))
        label = labels[k] if labels else f"{config.method.upper()} ({run.name})"
        series[label] = [_point(driver, ["--model_path", str(c), "--steps", str(steps)], checkpoint_step(c) * batch)
                         for c in checkpoints]
        first_checkpoint = first_checkpoint or str(checkpoints[-1])
    w = _trained_guidance(first_checkpoint, driver.exps_root) if first_checkpoint else 5.0
    references = _references_of_base(driver, first_checkpoint, steps, w)
    if driver.metrics == "world":
        _add_gain_recovered(driver, series, references["unguided"], references[f"CFG w={w:g}"])
    if ceiling:
        best = max(json.loads(Path(ceiling).read_text())["points"], key=lambda p: p["accuracy"])
        references["embedding-only ceiling"] = {"world_accuracy": best["accuracy"]}
    data = {"figure": "quality vs training samples", "runs": runs, "steps": steps, "series": series, "references": references}
    return write_figure(driver.out, "accuracy_vs_samples", data, lambda png: plot_series(
        png, series, driver.columns, "training samples (updates x batch)", "quality vs training samples, same data",
        references, logx=True))


def _add_gain_recovered(driver: Driver, series: dict, unguided: dict, cfg: dict) -> None:
    """Each point's share of CFG's accuracy gain over unguided sampling, with the paired bootstrap 95% interval
    over prompts (every folder has the same prompts and seeds)."""
    def correct(values):
        return driver.world_correct(Path(values["folder"]))

    baseline = [correct(unguided), correct(cfg)]
    for points in series.values():
        for _, values in points:
            values["cfg_gain_recovered"] = gain_recovered(unguided["world_accuracy"], cfg["world_accuracy"], values["world_accuracy"])
            values["cfg_gain_recovered_ci95"] = list(gain_recovered_interval(*baseline, correct(values)))


def _references_of_base(driver: Driver, checkpoint: str, steps: int, w: float) -> dict[str, dict]:
    """Unguided and CFG sampling of the base model a trained model (any method) was trained on."""
    base = read_config(resolve_trained_config(checkpoint, driver.exps_root)).base_model
    argv = ["--pretrained_model_name_or_path", base, "--steps", str(steps)]
    return {"unguided": _point(driver, argv, 0)[1], f"CFG w={w:g}": _point(driver, argv + ["--cfg_scale", f"{w:g}"], 0)[1]}


def structure_ablation(driver: Driver, experiments: list[str], steps: int = 20) -> dict:
    """One DICE point per sharpener (experiment), x = its parameter count; labels name width and heads."""
    points, labels = [], []
    for experiment in experiments:
        sharpener, config = load_sharpener(experiment, driver.exps_root)
        size = sum(p.numel() for p in sharpener.parameters())
        x, values = _point(driver, ["--sharpener_path", experiment, "--steps", str(steps)], size)
        points.append((x, {**values, "inner_dim": config.inner_dim, "num_heads": config.num_heads, "step": config.step}))
        labels.append(f"{config.inner_dim}/{config.num_heads}")
    w = _trained_guidance(experiments[0], driver.exps_root)
    references = _references(driver, experiments[0], steps, w)
    series = {"DICE (inner width / heads)": sorted(points, key=lambda p: p[0])}
    data = {"figure": "A.1: sharpener structure", "experiments": experiments, "series": series, "references": references}
    return write_figure(driver.out, "sharpener_structure", data, lambda png: plot_series(
        png, series, driver.columns, "sharpener parameters", "sharpener structure (paper A.1): " + ", ".join(labels),
        references, logx=True))


def train_structures(base_argv: list[str], structures: list[tuple[int, int]], desc: str) -> list[str]:
    """Train one sharpener per (inner_dim, heads); a run folder already there is continued (a finished one has
    nothing to do), so an interrupted figure run does not count a half-trained sharpener as done."""
    runs = []
    for inner_dim, heads in structures:
        argv = base_argv + ["--sharpener_inner_dim", str(inner_dim), "--sharpener_heads", str(heads), "--desc", f"{desc}-{inner_dim}x{heads}"]
        root = build_parser("sd15").parse_known_args(argv + ["--pretrained_model_name_or_path", "-", "--train_data_dir", "-"])[0].output_dir
        earlier = sorted(Path(root).glob(f"[0-9][0-9][0-9][0-9][0-9]-{desc}-{inner_dim}x{heads}"))
        if earlier:
            argv += ["--resume_from_checkpoint", "latest", "--experiment", str(earlier[-1])]
        print(f"$ python train_sd15.py {shlex.join(argv)}", flush=True)
        runs.append(str(train_main("sd15", argv)))
    return runs


def _structure(text: str) -> tuple[int, int]:
    try:
        width, heads = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEADS (e.g. 512x8)") from None
    if width < 1 or heads < 1 or width % heads:
        raise argparse.ArgumentTypeError(f"{text!r}: the width must be a positive multiple of the heads")
    return width, heads


# ---- command lines (figures/*.py) --------------------------------------------------------------------

def _run(prog: str, doc: str, add, go, argv=None):
    p = parser(prog, doc)
    add(p)
    args = p.parse_args(argv)
    quiet_threads()
    return go(Driver.from_args(args), args)


def nfe_cli(argv=None):
    def add(p):
        p.add_argument("--sharpener_path", required=True, help="experiment id, run or checkpoint folder, or Hub repo id")
        p.add_argument("--nfe", type=positive_int, nargs="+", default=[4, 8, 10, 16, 20, 30, 40], help="NFE budgets")
        p.add_argument("--cfg_scale", type=guidance_scale, default=None, help="CFG's w (default: the sharpener's training w)")
    return _run("figures/quality_vs_nfe.py", __doc__, add, lambda d, a: nfe_sweep(d, a.sharpener_path, a.nfe, a.cfg_scale), argv)


def alpha_cli(argv=None):
    def add(p):
        p.add_argument("--sharpener_path", required=True)
        p.add_argument("--alphas", type=finite_float, nargs="+", default=[0, 0.5, 1, 1.5, 2, 3], help="strengths")
        p.add_argument("--steps", type=positive_int, default=20)
    return _run("figures/alpha_sweep.py", __doc__, add, lambda d, a: alpha_sweep(d, a.sharpener_path, a.alphas, a.steps), argv)


def dice_cfg_cli(argv=None):
    def add(p):
        p.add_argument("--sharpener_path", required=True)
        p.add_argument("--cfg_scales", type=guidance_scale, nargs="+", default=[1, 1.5, 2, 3, 5, 7.5], help="guidance scales w")
        p.add_argument("--steps", type=positive_int, default=20)
    return _run("figures/dice_cfg_sweep.py", __doc__, add, lambda d, a: dice_cfg_sweep(d, a.sharpener_path, a.cfg_scales, a.steps), argv)


def training_cli(argv=None):
    def add(p):
        p.add_argument("--experiment", required=True, help="experiment id or run folder (every checkpoint-<step> is sampled)")
        p.add_argument("--steps", type=positive_int, default=20)
    return _run("figures/training_curve.py", __doc__, add, lambda d, a: training_curve(d, a.experiment, a.steps), argv)


def samples_cli(argv=None):
    def add(p):
        p.add_argument("--runs", nargs="+", required=True, help="experiments (any method) whose checkpoints are sampled")
        p.add_argument("--labels", nargs="*", default=None, help="a legend name per run (default: method and folder)")
        p.add_argument("--ceiling", default=None, help="embedding_ceiling.json (figures/embedding_ceiling.py): its best accuracy as a line")
        p.add_argument("--steps", type=positive_int, default=20)
    return _run("figures/accuracy_vs_samples.py", __doc__, add, lambda d, a: samples_curve(d, a.runs, a.labels, a.steps, a.ceiling), argv)


def structure_cli(argv=None):
    def add(p):
        p.add_argument("--experiments", nargs="*", default=[], help="trained sharpeners to compare (ids or folders)")
        p.add_argument("--train", type=_structure, nargs="*", default=[], metavar="WIDTHxHEADS",
                       help="also train these structures (paper: 512x8) with --train_args")
        p.add_argument("--train_args", default="", help="train_sd15.py options for --train, one string (model, data, preset, steps)")
        p.add_argument("--steps", type=positive_int, default=20)

    def go(driver, args):
        if not args.experiments and not args.train:
            raise UserError("nothing to compare. Give --experiments and/or --train WIDTHxHEADS ... --train_args '...'")
        trained = train_structures(shlex.split(args.train_args), args.train, "structure") if args.train else []
        return structure_ablation(driver, list(args.experiments) + trained, args.steps)
    return _run("figures/sharpener_structure.py", __doc__, add, go, argv)
