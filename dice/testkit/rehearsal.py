"""Rehearse every launch.sh recipe on the CPU before booking a cluster: `bash launch.sh rehearse [RECIPE ...]`.

Each recipe runs through launch.sh exactly as the README writes it (`bash launch.sh train sd15`,
`bash launch.sh table1 sdxl`, ...), with launch.sh's environment variables pointing at stand-ins:

  MODELS_DIR    a tiny random pipeline of the right family for every model name of dice/presets.py
                (dice/testkit/tiny.py; SD3 and PixArt-Sigma too), and one as a single .safetensors file for the transfer figure
  COCO          a tiny folder in MS-COCO 2017's layout (train2017/, val2017/, annotations/captions_*.json)
  DICE_PROMPTS_DIR  a few prompts for each HPS v2 style and DrawBench; PROMPT_LIMIT: 4 prompts of every set
  NGPUS, PRECISION, ACCELERATE_ARGS   one CPU process (the SLURM job: two processes, one machine)
  TRAIN_ARGS    32 px, batch 2, 4 updates with a checkpoint every 2
  SMOKE_TEST    the evaluators' random-weight stand-ins (meaningless numbers: the plumbing is what is tested)

Every stage runs for real: training DICE / GD / PnP, sampling every Table 1 row and prompt set, the FID
reference, evaluation, the tables and every figure; then one Table 1 block is killed halfway and rerun,
and must resume and end with the same table. Each step's output goes to <dir>/logs/; a step that
fails, or whose outputs are missing, ends the rehearsal with its log's tail.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from PIL import Image

from ..errors import ArgumentParser, UserError, check_output_dir, exit_on_user_error
from ..paper import VAES
from ..presets import MODELS
from .data import write_synthetic_dataset
from .single_file import save_single_file
from .tiny import save_tiny_pipeline

REPO = Path(__file__).resolve().parents[2]
PROMPT_LIMIT = 4
HPS_SETS = ("hps-anime", "hps-concept-art", "hps-paintings", "hps-photo", "drawbench")
TRAIN_ARGS = ("--resolution=32 --train_batch_size=2 --max_train_steps=4 --checkpointing_steps=2 "
              "--validation_inference_steps=2 --dataloader_num_workers=0")
FINAL_STEP = 4  # --max_train_steps above
# What launch.sh reads from the environment (its header): a rehearsal sets its own or none.
LAUNCH_VARIABLES = ("NGPUS", "COCO", "FID_REF", "ACCELERATE_ARGS", "PRECISION", "PYTHON", "PROMPT_SETS", "WORKDIR", "TRAIN_ARGS",
                    "PROMPT_LIMIT", "SMOKE_TEST", "MODELS_DIR", "TOY_PROMPTS", "PROMPTS", "RESULTS", "STRUCTURE_EXPS",
                    "TRANSFER_SHARPENERS", "TRANSFER_MODELS", "SINGLE_FILE_CONFIG", "DICE_PROMPTS_DIR")


class RehearsalFailed(Exception):
    """A recipe failed or did not write what it should: a bug to fix before the cluster."""


class MissingOutput(Exception):
    """What a recipe should have written is not there (or not as it should be)."""


def expect(condition: object, problem: str) -> None:
    if not condition:
        raise MissingOutput(problem)


# ---- the stand-ins ----------------------------------------------------------------------------------

def write_models(folder: Path) -> dict[str, Path]:
    """A tiny pipeline for every hub model launch.sh names (dice/presets.py), each from its own seed."""
    from transformers.utils import logging as transformers_logging


    transformers_logging.disable_progress_bar()  # a bar per saved text encoder
    named = {name: family for name, (family, path) in MODELS.items() if not os.path.exists(path)}  # hub ids only
    named.update({name: "sdxl" for name in VAES})  # a whole tiny SDXL pipeline: the VAE loader reads its vae/
    return {name: save_tiny_pipeline(folder / name, family, seed=seed) for seed, (name, family) in enumerate(named.items())}


def write_single_file(model: Path, file: Path) -> Path:
    """A model as one original-layout .safetensors file (paper Fig. 6 loads two variants that way)."""
    from diffusers.utils import logging as diffusers_logging


    diffusers_logging.disable_progress_bar()  # "Loading pipeline components"
    return save_single_file(model, file)


def write_coco(root: Path, train_images: int = 12, val_images: int = 6) -> Path:
    """MS-COCO 2017's layout in miniature: JPEGs of coloured shapes and their captions."""
    with tempfile.TemporaryDirectory() as tmp:
        synthetic = write_synthetic_dataset(Path(tmp), num_images=train_images + val_images, size=48)
        rows = [json.loads(line) for line in (synthetic / "metadata.jsonl").read_text().splitlines()]
        for split, part in (("train2017", rows[:train_images]), ("val2017", rows[train_images:])):
            (root / split).mkdir(parents=True, exist_ok=True)
            images, annotations = [], []
            for k, row in enumerate(part):
                image_id = 1000 + k
                name = f"{image_id:012d}.jpg"
                with Image.open(synthetic / row["file_name"]) as image:
                    # Not square: the loader's centre crop runs as on real COCO.
                    image.convert("RGB").resize((64, 48)).save(root / split / name, quality=90)
                images.append({"id": image_id, "file_name": name, "height": 48, "width": 64})
                annotations += [{"id": 10 * image_id + j, "image_id": image_id, "caption": caption}
                                for j, caption in enumerate(row["text"])]
            (root / "annotations").mkdir(exist_ok=True)
            (root / "annotations" / f"captions_{split}.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    return root


def write_prompt_sets(folder: Path) -> Path:
    """HPS v2's four styles (JSON lists, as its benchmark files) and DrawBench (the sheet's CSV export)."""
    folder.mkdir(parents=True, exist_ok=True)
    words = {"anime": "a cat", "concept-art": "a house", "paintings": "a tree", "photo": "a car"}
    for style, thing in words.items():
        (folder / f"{style}.json").write_text(json.dumps([f"{thing} on a red field", f"{thing} under a blue sky", f"a small {thing}"]))
    (folder / "drawbench.csv").write_text("Prompts,Category\na green ball next to a cup,Colors\na dog sitting on a chair,Positional\n"
                                          "a yellow boat,Colors\n")
    return folder


# ---- running launch.sh ------------------------------------------------------------------------------

@dataclass
class Rehearsal:
    root: Path
    python: str = sys.executable
    runs: dict[str, list[str]] = field(default_factory=dict)  # step label -> run folders it made
    done: list[str] = field(default_factory=list)
    log_dir: Path = field(init=False)

    def __post_init__(self):
        self.log_dir = self.root / "logs"

    @property
    def work(self) -> Path:
        return self.root / "work"

    def env(self, work: Path | None = None, **extra: str) -> dict[str, str]:
        """launch.sh's environment: every stand-in, one CPU process; none of the caller's own settings of launch.sh."""
        env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}
        env.update(
            PYTHON=self.python, WORKDIR=str(work or self.work), NGPUS="1", PRECISION="no",
            ACCELERATE_ARGS="--num_machines=1 --dynamo_backend=no", MODELS_DIR=str(self.root / "models"),
            COCO=str(self.root / "data" / "coco2017"), FID_REF=str(self.root / "data" / "coco_val2017_smoke.npz"),
            TRAIN_ARGS=TRAIN_ARGS, PROMPT_LIMIT=str(PROMPT_LIMIT), SMOKE_TEST="1",
            DICE_PROMPTS_DIR=str(self.root / "prompts"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
        )
        env.update(extra)
        return env

    @staticmethod
    def shown(extra: dict[str, str], argv: list[str]) -> str:
        """The command as one would type it (a PATH extended in front is shown as such)."""
        inherited = os.pathsep + os.environ.get("PATH", "")
        words = [f"PATH={shlex.quote(v[: -len(inherited)])}:$PATH" if k == "PATH" and v.endswith(inherited) else f"{k}={shlex.quote(v)}"
                 for k, v in extra.items()]
        return shlex.join(argv) if not words else " ".join(words) + " " + shlex.join(argv)

    def run(self, label: str, args: list[str], check: Callable[[], None] | None = None, work: Path | None = None,
            command: list[str] | None = None, **extra: str) -> None:
        """`bash launch.sh ARGS` (or ``command``) with the stand-ins; ``check`` then looks at what it wrote."""
        argv = command or ["bash", str(REPO / "launch.sh"), *args]
        work = work or self.work
        before = self._run_folders(work)
        log = self._log(label)
        print(f"[{len(self.done) + 1:2d}] {self.shown(extra, ['bash', 'launch.sh', *args] if command is None else argv)}", flush=True)
        started = time.time()
        with open(log, "w") as out:
            code = subprocess.run(argv, cwd=REPO, env=self.env(work, **extra), stdout=out, stderr=subprocess.STDOUT).returncode
        if code != 0:
            raise RehearsalFailed(f"'{label}' exited with status {code}. Its log, {log}, ends:\n{tail(log)}")
        self.runs[label] = sorted(set(self._run_folders(work)) - set(before))
        if check is not None:
            try:
                check()
            except MissingOutput as error:
                raise RehearsalFailed(f"'{label}' ran but {error} (log: {log})") from None
        self.done.append(label)
        print(f"     ok, {time.time() - started:.0f} s", flush=True)

    def _log(self, label: str) -> Path:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        return self.log_dir / f"{len(self.done) + 1:02d}-{label.replace(' ', '-').replace('/', '-')}.log"

    @staticmethod
    def _run_folders(work: Path) -> list[str]:
        return sorted(p.name for p in (work / "exps").glob("[0-9][0-9][0-9][0-9][0-9]-*")) if (work / "exps").is_dir() else []

    def run_id(self, label: str) -> str:
        """The experiment number of the run a step made, as the README's commands take it ("3")."""
        (name,) = self.runs[label]
        return str(int(name[:5]))


def tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# ---- what each recipe must have written -------------------------------------------------------------

def trained(work: Path, run: str, processes: int = 1) -> None:
    folder = work / "exps" / run
    expect((folder / f"checkpoint-{FINAL_STEP}").is_dir(), f"{folder} has no checkpoint-{FINAL_STEP}")
    expect(list((folder / "validation").glob("step-*.png")), f"{folder} has no validation grid")
    options = json.loads((folder / "training_options.json").read_text())
    expect(options["num_processes"] == processes, f"{folder} trained with {options['num_processes']} process(es), not {processes}")


def table_written(stem: Path, rows: int, columns: tuple[str, ...]) -> None:
    for suffix in (".md", ".csv", ".json", ".png"):
        expect(stem.with_suffix(suffix).is_file(), f"{stem.with_suffix(suffix)} is missing")
    table = json.loads(stem.with_suffix(".json").read_text())
    expect(len(table) == rows, f"{stem}.json has {len(table)} rows, not {rows}")
    for row in table:
        missing = [c for c in columns if c not in row["values"]]
        expect(not missing, f"{stem}.json row {row['method']} {row['guidance']} has no {', '.join(missing)}")


def comparable(table: Path) -> list[tuple]:
    """A table's rows as numbers and labels, without the folder and run names that differ between workdirs."""
    return [(r["method"], r["guidance"], r["nfe"], r["params"], r["sharpener_step"], json.dumps(r["values"], sort_keys=True))
            for r in json.loads(table.read_text())]


PAPER_COLUMNS = ("fid", "clip_score", "aesthetic")
FIGURES = ("quality_vs_nfe", "alpha_sweep", "dice_cfg_sweep", "training_curve", "sharpener_structure", "transfer_matrix",
           "semantic_padding", "semantic_padding_panel", "embedding_pca", "attention_maps", "attention_trajectory",
           "prompt_optimisation", "prompt_optimisation_grid", "table")


# ---- the recipes ------------------------------------------------------------------------------------

# launch.sh train's models: the paper's families, and the families after it (SD3.5 through its short name, PixArt-Sigma
# through its 512 checkpoint: a transformer put into the 1024 pipeline).
TRAINED_MODELS = ("sd15", "sdxl", "pixart", "sd3.5-medium", "pixart-sigma-512")


def rehearse_train(r: Rehearsal) -> None:
    for name in TRAINED_MODELS:
        r.run(f"train {name}", ["train", name], lambda n=name: trained(r.work, r.runs[f"train {n}"][0]))


def rehearse_train_variants(r: Rehearsal) -> None:
    def check():
        expect(len(r.runs["train-variants"]) == 3, f"made {r.runs['train-variants']}, not three runs")
        for run in r.runs["train-variants"]:
            trained(r.work, run)
            config = json.loads((r.work / "exps" / run / f"checkpoint-{FINAL_STEP}" / "sharpener.json").read_text())
            expect(config["negative_prompts"], f"{run} was trained without negative prompts")

    r.run("train-variants", ["train-variants"], check)


def rehearse_slurm(r: Rehearsal) -> None:
    """slurm/train_sd15.sbatch as a job of one node with two processes: `srun` and `scontrol` stubbed."""
    stubs = r.root / "slurm-stubs"
    stubs.mkdir(exist_ok=True)
    (stubs / "scontrol").write_text('#!/bin/sh\n[ "$1 $2" = "show hostnames" ] && echo 127.0.0.1\n')
    (stubs / "srun").write_text('#!/bin/sh\n# one node: its one task\nSLURM_NODEID=0 SLURM_PROCID=0 exec "$@"\n')
    for stub in ("scontrol", "srun"):
        (stubs / stub).chmod(0o755)

    def check():
        (run,) = r.runs["slurm job"]
        trained(r.work, run, processes=2)
        expect(list((r.work / "data" / "latents" / "sd15-512").rglob("*.safetensors")), "no latent cache was written")

    r.run("slurm job", ["(sbatch)"], check, command=["bash", "slurm/train_sd15.sbatch"],
          PATH=f"{stubs}{os.pathsep}{os.environ.get('PATH', '')}", SLURM_JOB_NODELIST="localhost", SLURM_NNODES="1",
          GPUS_PER_NODE="2", MAIN_PORT=free_port())


def rehearse_sample(r: Rehearsal) -> None:
    sets = " ".join(("coco5k", *HPS_SETS))

    def check():
        folders = sorted((r.work / "samples").iterdir())
        expect(len(folders) == 3 * (1 + len(HPS_SETS)), f"samples/ holds {len(folders)} folders, not {3 * (1 + len(HPS_SETS))}")
        for folder in folders:
            options = json.loads((folder / "sampling_options.json").read_text())
            images = len(list(folder.glob("[0-9]*.png")))
            expect(options["num_images"] == min(PROMPT_LIMIT, options["prompt_set_size"]) == images
                   and (folder / "manifest.jsonl").is_file(), f"{folder} holds {images} images of {options['num_images']}")

    r.run("sample", ["sample", r.run_id("train sd15")], check, PROMPT_SETS=sets)


def rehearse_eval(r: Rehearsal) -> None:
    folders = sorted(f"samples/{p.name}" for p in (r.work / "samples").iterdir())  # the shell's samples/*

    def check():
        lines = (r.work / "results" / "results.jsonl").read_text().splitlines()
        expected = 3 * len(PAPER_COLUMNS) + 3 * len(HPS_SETS)
        expect(len(lines) == expected, f"results.jsonl has {len(lines)} lines, not {expected}")

    r.run("eval", ["eval", *folders], check)


def rehearse_table(r: Rehearsal) -> None:
    hps_columns = ("hps_anime", "hps_concept", "hps_painting", "hps_photo", "drawbench")
    r.run("table", ["table"], lambda: table_written(r.work / "results" / "table", 3, PAPER_COLUMNS + hps_columns))


def rehearse_ref(r: Rehearsal) -> None:
    ref = Path(r.env()["FID_REF"])

    def check():
        expect(ref.is_file(), f"{ref} was not written")

    if ref.exists():
        ref.unlink()  # `ensure_ref` of an earlier recipe may have built it: this recipe builds it again
    r.run("ref", ["ref"], check)


def rehearse_figures(r: Rehearsal) -> None:
    models = r.root / "models"
    single = models / "animepasteldream.safetensors"
    r.run("train structure", ["train", "sd15", "--sharpener_inner_dim=64", "--sharpener_heads=4", "--desc=structure-64x4"],
          lambda: trained(r.work, r.runs["train structure"][0]))
    experiment = r.run_id("train sd15")
    out = r.work / "results" / "figures" / experiment

    def check():
        missing = [name for name in FIGURES if not (out / f"{name}.png").is_file()]
        expect(not missing, f"{out} lacks {', '.join(f'{m}.png' for m in missing)}")

    variants = " ".join(str(int(run[:5])) for run in r.runs["train-variants"])
    r.run("figures", ["figures", experiment], check, STRUCTURE_EXPS=r.run_id("train structure"), TRANSFER_SHARPENERS=variants,
          TRANSFER_MODELS=f"{models / 'dreamshaper'} {models / 'absolutereality'} {single}",
          SINGLE_FILE_CONFIG=str(models / "animepasteldream"))


TABLE1_BLOCKS = {"sd15": 6, "dreamshaper": 6, "sdxl": 6, "pixart": 5}  # rows; PixArt-α has no PnP


def rehearse_table1(r: Rehearsal, blocks=tuple(TABLE1_BLOCKS)) -> None:
    for block in blocks:
        if f"table1 {block}" in r.done:
            continue
        extra = {"PROMPT_SETS": "coco5k drawbench"} if block == "dreamshaper" else {}  # the block's loop over sets
        columns = PAPER_COLUMNS + (("drawbench",) if extra else ())
        r.run(f"table1 {block}", ["table1", block],
              lambda b=block, c=columns: table_written(r.work / "results" / f"table1-{b}", TABLE1_BLOCKS[b], c), **extra)


def rehearse_resume(r: Rehearsal) -> None:
    """`table1 sd15` killed once its GD run has a checkpoint (DICE done, GD half-trained, PnP and every sample
    still to come), then run again: it must continue the same runs and end with the uninterrupted table."""
    rehearse_table1(r, ("sd15",))
    work = r.root / "interrupted"
    label = "table1 sd15, killed halfway"
    print(f"[{len(r.done) + 1:2d}] {label}: bash launch.sh table1 sd15 (in a fresh WORKDIR), then the same again", flush=True)
    started = time.time()
    log = r._log(label)
    with open(log, "w") as out:
        job = subprocess.Popen(["bash", str(REPO / "launch.sh"), "table1", "sd15"], cwd=REPO, env=r.env(work), stdout=out,
                               stderr=subprocess.STDOUT, start_new_session=True)
        try:
            while job.poll() is None and not list((work / "exps").glob("*-table1-sd15-gd/checkpoint-*")):
                time.sleep(0.1)
        finally:
            if job.poll() is None:
                os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    if job.returncode >= 0:
        raise RehearsalFailed(f"'{label}' ended (status {job.returncode}) before it could be interrupted. Its log, {log}, ends:\n{tail(log)}")
    killed_at = sorted(p.name for p in (work / "exps").glob("*-table1-sd15-gd/checkpoint-*"))
    r.done.append(label)
    print(f"     killed with GD at {', '.join(killed_at)}, {time.time() - started:.0f} s", flush=True)

    def check():
        for method in ("dice", "gd", "pnp"):
            runs = list((work / "exps").glob(f"*-table1-sd15-{method}"))
            expect(len(runs) == 1, f"the rerun made {len(runs)} {method} runs, not one")
        expect("resumed from" in next((work / "exps").glob("*-table1-sd15-gd")).joinpath("log.txt").read_text(), "the GD run was not resumed")
        whole, resumed = comparable(r.work / "results" / "table1-sd15.json"), comparable(work / "results" / "table1-sd15.json")
        expect(whole == resumed, f"the resumed block's table differs from the uninterrupted one:\n{resumed}\n{whole}")

    r.run("table1 sd15, rerun", ["table1", "sd15"], check, work=work)


def free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


# Recipe -> (what runs it, the recipes whose outputs it reads). In this order.
RECIPES: dict[str, tuple[Callable[[Rehearsal], None], tuple[str, ...]]] = {
    "train": (rehearse_train, ()),
    "train-variants": (rehearse_train_variants, ()),
    "slurm": (rehearse_slurm, ()),
    "sample": (rehearse_sample, ("train",)),
    "eval": (rehearse_eval, ("sample",)),
    "table": (rehearse_table, ("eval",)),
    "ref": (rehearse_ref, ()),
    "figures": (rehearse_figures, ("train", "train-variants")),
    "table1": (rehearse_table1, ()),
    "resume": (rehearse_resume, ()),
}


def with_prerequisites(requested: list[str]) -> list[str]:
    wanted: set[str] = set()

    def add(name: str) -> None:
        if name not in wanted:
            wanted.add(name)
            for needed in RECIPES[name][1]:
                add(needed)

    for name in requested:
        add(name)
    return [name for name in RECIPES if name in wanted]


def prepare(root: Path) -> None:
    print(f"Stand-ins in {root}: tiny models, a tiny COCO, a few prompts per set", flush=True)
    write_models(root / "models")
    write_single_file(root / "models" / "animepasteldream", root / "models" / "animepasteldream.safetensors")
    write_coco(root / "data" / "coco2017")
    write_prompt_sets(root / "prompts")


def rehearse(recipes: list[str], root: Path, python: str = sys.executable) -> Rehearsal:
    started = time.time()
    r = Rehearsal(root, python)
    prepare(root)
    common = {k: v for k, v in r.env().items() if k in ("NGPUS", "PRECISION", "ACCELERATE_ARGS", "MODELS_DIR", "COCO", "FID_REF",
                                                         "TRAIN_ARGS", "PROMPT_LIMIT", "SMOKE_TEST", "DICE_PROMPTS_DIR", "WORKDIR")}
    print("Every command below runs with " + " ".join(f"{k}={shlex.quote(v)}" for k, v in common.items()), flush=True)
    for name in recipes:
        RECIPES[name][0](r)
    print(f"Rehearsal passed: {len(r.done)} steps ({', '.join(recipes)}) in {(time.time() - started) / 60:.1f} min", flush=True)
    return r


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="bash launch.sh rehearse", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipes", nargs="*", metavar="RECIPE", help=f"any of {', '.join(RECIPES)} (default: all; "
                        "a recipe brings the ones it reads from)")
    parser.add_argument("--dir", default=None, help="scratch folder, new or empty (default: a temporary folder, deleted "
                        "when the rehearsal passes)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder when the rehearsal passes")
    args = parser.parse_args(argv)
    unknown = [name for name in args.recipes if name not in RECIPES]
    if unknown:
        raise UserError(f"no recipe {', '.join(repr(n) for n in unknown)} to rehearse. Choose from {', '.join(RECIPES)}")
    if args.dir:
        check_output_dir(args.dir, "--dir")
        if Path(args.dir).exists() and any(Path(args.dir).iterdir()):
            raise UserError(f"--dir '{args.dir}' is not empty: a rehearsal starts from nothing. Give a new or empty folder")
    root = Path(args.dir or tempfile.mkdtemp(prefix="dice-rehearsal-")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    try:
        rehearse(with_prerequisites(args.recipes or list(RECIPES)), root)
    except RehearsalFailed as failure:
        print(f"\nREHEARSAL FAILED: {failure}\nEverything it wrote is in {root}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    if args.dir or args.keep:
        print(f"Everything it wrote is in {root}")
    else:
        shutil.rmtree(root)


if __name__ == "__main__":
    with exit_on_user_error():
        main()
