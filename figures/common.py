"""What the figure drivers share: sampling through sample.py, scoring with reuse, JSON and PNG output."""
from __future__ import annotations

import argparse
import logging
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dice.adapters import adapter_class
from dice.checkpoint import check_sharpener_fits, load_sharpener
from dice.errors import ArgumentParser, UserError, check_output_dir, non_negative_int, positive_int
from dice.presets import model_location
from dice.sample_cli import main as sample_main
from dice.sampling import use_scheduler
from dice.shapes_world import DEFAULT_EVALUATOR
from dice.shapes_world.evaluator import load_evaluator
from dice.shapes_world.folder_scores import calc_shapes_world
from evaluation.metrics import append_result, calc_aesthetic, calc_clip_score, calc_fid
from evaluation.metrics.fid import load_inception
from evaluation.metrics.images import open_image_collection
from evaluation.metrics.smoke import mark_smoke_test, smoke_aesthetic_models, smoke_clip_score_model, smoke_feature_extractor
from evaluation.plotting import pyplot, save_figure
from evaluation.record import read_results

logger = logging.getLogger("dice")

SUITES = {  # --metrics -> the table columns it fills
    "world": ("world_accuracy", "world_fd"),  # the shapes world's CLIP score and FID
    "paper": ("fid", "clip_score", "aesthetic"),  # FID only with --ref
}
TITLES = {"world_accuracy": "prompt accuracy (world) ↑", "world_fd": "FD (world) ↓", "fid": "FID ↓",
          "clip_score": "CLIP score ↑", "aesthetic": "aesthetic score ↑"}


def parser(prog: str, description: str) -> ArgumentParser:
    """A figure CLI's parser with the options every driver over sample.py shares."""
    p = ArgumentParser(prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="results/figures", help="folder for <name>.json, <name>.png, samples/ and results.jsonl")
    p.add_argument("--exps_root", default="exps", help="where experiment ids are looked up")
    p.add_argument("--prompts", default="coco5k", help="prompt set or file for sample.py (the world: a file from python -m dice.shapes_world prompts)")
    p.add_argument("--num_images", type=positive_int, default=None, help="only the first N prompts (default: all)")
    p.add_argument("--resolution", type=positive_int, default=None, help="image size (default: the sharpener's training size)")
    p.add_argument("--batch_gpu", type=positive_int, default=16, help="images per batch per process")
    p.add_argument("--seed", type=non_negative_int, default=0, help="image i uses seed + i")
    p.add_argument("--metrics", choices=sorted(SUITES), default="paper",
                   help="paper: FID (with --ref), CLIP score, aesthetic score; world: the shapes world's accuracy and FD")
    p.add_argument("--ref", default=None, help="FID reference statistics .npz (paper metrics; without it FID is skipped)")
    p.add_argument("--smoke_test", action="store_true", help="paper metrics with tiny random-weight stand-ins (meaningless numbers)")
    return p


@dataclass
class Driver:
    """Samples configurations into ``out/samples`` and scores them into ``out/results.jsonl`` (reusing both)."""

    out: Path
    prompts: str
    num_images: int | None = None
    resolution: int | None = None
    batch_gpu: int = 16
    seed: int = 0
    metrics: str = "paper"
    ref: str | None = None
    smoke_test: bool = False
    exps_root: str = "exps"
    _models: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_args(cls, args) -> "Driver":
        check_output_dir(args.out, "--out")
        if args.ref and not Path(args.ref).is_file():
            raise UserError(f"--ref '{args.ref}' does not exist. Build it with `bash launch.sh ref` (or evaluation/fid.py ref)")
        if args.metrics == "world" and (args.ref or args.smoke_test):
            raise UserError("--ref and --smoke_test apply to --metrics paper. Drop them for the shapes world's metrics")
        return cls(Path(args.out), args.prompts, args.num_images, args.resolution, args.batch_gpu, args.seed,
                   args.metrics, args.ref, args.smoke_test, args.exps_root)

    @property
    def columns(self) -> tuple[str, ...]:
        columns = SUITES[self.metrics]
        return tuple(c for c in columns if c != "fid" or self.ref)

    @property
    def results(self) -> Path:
        return self.out / "results.jsonl"

    def sample(self, argv: list[str]) -> Path:
        """sample.py with these options on the driver's prompts; an existing folder is only completed."""
        full = list(argv) + ["--prompts", self.prompts, "--outdir", str(self.out / "samples"), "--batch_gpu", str(self.batch_gpu),
                             "--seed", str(self.seed), "--exps_root", self.exps_root]
        full += ["--num_images", str(self.num_images)] if self.num_images else []
        full += ["--resolution", str(self.resolution)] if self.resolution and "--resolution" not in argv else []
        print(f"$ python sample.py {shlex.join(full)}", flush=True)
        return sample_main(full)

    def score(self, folder: Path) -> dict[str, float]:
        """{column: value} of a sample folder; values already in results.jsonl for this folder are reused."""
        done = self._scored(folder)
        missing = [c for c in self.columns if c not in done]
        if missing:
            for result in self._calc(folder, missing):
                if result.metric in missing:
                    if self.smoke_test:
                        mark_smoke_test(result)
                    append_result(self.results, result)
                    done[result.metric] = result.value
        return {c: done[c] for c in self.columns}

    def _scored(self, folder: Path) -> dict[str, float]:
        if not self.results.is_file():
            return {}
        count = len(open_image_collection(folder).records)
        found = {}
        for record in read_results(self.results):
            smoke = bool((record.get("options") or {}).get("smoke_test"))
            if os.path.normpath(record["images"]) == os.path.normpath(str(folder)) and record.get("count") == count and smoke == self.smoke_test:
                found[record["metric"]] = record["value"]
        return found

    def world_correct(self, folder: Path) -> list[int]:
        """1/0 per image of a sample folder: all four attributes of its prompt right (the world's evaluator)."""
        accuracy = calc_shapes_world(folder, evaluator=self._model("world", _world_evaluator))[0]
        return accuracy.per_image

    def _calc(self, folder: Path, columns: list[str]):
        if self.metrics == "world":
            return calc_shapes_world(folder, evaluator=self._model("world", _world_evaluator))

        results = []
        if "fid" in columns:
            extractor = self._model("fid", _fid_extractor, self.smoke_test)
            results.append(calc_fid(folder, self.ref, feature_extractor=extractor))
        if "clip_score" in columns:
            model = self._model("clip", _clip_model, self.smoke_test)
            results.append(calc_clip_score(folder, **model) if model else calc_clip_score(folder))
        if "aesthetic" in columns:
            model = self._model("aesthetic", _aesthetic_model, self.smoke_test)
            results.append(calc_aesthetic(folder, **model) if model else calc_aesthetic(folder))
        return results

    def _model(self, name, build, *args):
        if name not in self._models:  # load each metric network once per driver
            self._models[name] = build(*args)
        return self._models[name]


def _world_evaluator():
    return load_evaluator(str(DEFAULT_EVALUATOR), "cpu")


def _fid_extractor(smoke: bool):
    return smoke_feature_extractor() if smoke else load_inception()


def _clip_model(smoke: bool):
    return dict(zip(("model", "preprocess", "tokenizer"), smoke_clip_score_model())) if smoke else None


def _aesthetic_model(smoke: bool):
    return dict(zip(("head", "clip_model", "image_processor"), smoke_aesthetic_models())) if smoke else None


# ---- output --------------------------------------------------------------------------------------

def plot_series(path: Path, series: dict[str, list[tuple[float, dict]]], columns: tuple[str, ...], xlabel: str,
                title: str, references: dict[str, dict] | None = None, logx: bool = False) -> Path:
    """One panel per metric column: a line per series over x, dashed horizontal lines for references."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(columns), figsize=(3.6 * len(columns), 3.0), squeeze=False)
    for ax, column in zip(axes[0], columns):
        for name, points in series.items():
            xs = [x for x, values in points if column in values]
            ax.plot(xs, [values[column] for _, values in points if column in values], marker="o", label=name)
        for k, (name, values) in enumerate((references or {}).items()):
            if column in values:
                ax.axhline(values[column], linestyle="--", color=f"C{len(series) + k}", label=name)
        ax.set_xlabel(xlabel)
        ax.set_title(TITLES.get(column, column), fontsize=10)
        if logx:  # labelled at the data's own x values (16k, 32k, ...), not at log-axis minor ticks that overlap
            ax.set_xscale("log")
            ticks = sorted({x for points in series.values() for x, _ in points})
            ax.set_xticks(ticks, [f"{x / 1000:g}k" if x >= 1000 else f"{x:g}" for x in ticks], fontsize=7, rotation=45)
            ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    return save_figure(fig, path, title)


# ---- a sharpener and its model, in this process ------------------------------------------------------

def model_arguments(p) -> None:
    """For analyses that look inside the model: which sharpener, which base model, which device."""
    p.add_argument("--sharpener_path", required=True, help="experiment id, run or checkpoint folder, or Hub repo id")
    p.add_argument("--pretrained_model_name_or_path", default=None, help="base model (default: the sharpener's)")
    p.add_argument("--exps_root", default="exps", help="where experiment ids are looked up")
    p.add_argument("--out", default="results/figures", help="output folder")
    p.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda when available)")
    p.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default=None, help="model dtype (default: fp16 on GPU, fp32 on CPU)")


def load_model_and_sharpener(args):
    """(adapter on its device, sharpener, config) from model_arguments' options; checks before loading."""
    check_output_dir(args.out, "--out")
    sharpener, config = load_sharpener(args.sharpener_path, args.exps_root)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    precision = args.mixed_precision or ("fp16" if device.type == "cuda" else "no")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)

    model = model_location(args.pretrained_model_name_or_path or config.base_model)
    adapter = adapter_class(config.family).from_pretrained(model, torch_dtype=dtype, **config.family_options)
    check_sharpener_fits(config, args.sharpener_path, dim=adapter.text_dim)
    adapter.freeze(device, dtype)

    use_scheduler(adapter, "dpmsolver++")
    return adapter, sharpener.to(device), config


