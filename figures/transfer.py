"""Cross-model transfer (paper Fig. 6): every sharpener applied to every base model of its family.

The paper trains sharpeners on DreamShaper, DreamShaper PixelArt and Anime Pastel Dream and plugs
each into all three. Base models are hub ids, diffusers folders or single ``.safetensors`` files
(``--single_file_config`` gives the latter their configuration offline). Each cell is one sample
folder scored with the driver's metrics; the row "unguided" is each model without a sharpener.
Out: the matrix as JSON and one heat map per metric.
"""
from __future__ import annotations

from pathlib import Path

from dice.checkpoint import read_config, resolve_sharpener_files
from dice.errors import positive_int
from dice.runtime import quiet_threads
from evaluation.plotting import pyplot, save_figure, write_figure

from .common import TITLES, Driver, parser


def transfer_matrix(driver: Driver, sharpeners: list[str], models: list[str], steps: int = 20,
                    single_file_config: str | None = None) -> dict:
    configs = {s: read_config(resolve_sharpener_files(s, driver.exps_root)[1]) for s in sharpeners}
    extra = ["--single_file_config", single_file_config] if single_file_config else []
    family = next(iter(configs.values())).family
    rows = {"unguided": {}}
    for model in models:
        folder = driver.sample(["--pretrained_model_name_or_path", model, "--family", family, "--steps", str(steps)] + extra)
        rows["unguided"][model] = {**driver.score(folder), "folder": str(folder)}
    for sharpener, config in configs.items():
        label = f"{Path(sharpener).name}\n(trained on {Path(str(config.base_model)).name})"
        rows[label] = {}
        for model in models:
            argv = ["--sharpener_path", sharpener, "--pretrained_model_name_or_path", model, "--steps", str(steps)] + extra
            folder = driver.sample(argv)
            rows[label][model] = {**driver.score(folder), "folder": str(folder)}
    data = {"figure": "Fig. 6: cross-model transfer", "models": models, "sharpeners": sharpeners, "steps": steps, "matrix": rows}

    def plot(png):
        plt = pyplot()
        columns = driver.columns
        fig, axes = plt.subplots(1, len(columns), figsize=(3.2 + 1.6 * len(models) * len(columns), 1.2 + 0.55 * len(rows)), squeeze=False)
        names = [Path(m).name for m in models]
        for ax, column in zip(axes[0], columns):
            values = [[rows[r][m][column] for m in models] for r in rows]
            image = ax.imshow(values, cmap="viridis_r" if column.endswith("fd") or column == "fid" else "viridis", aspect="auto")
            for i, line in enumerate(values):
                for j, value in enumerate(line):  # dark text on the bright end of the colour map
                    bright = image.norm(value) > 0.5 if column not in ("fid", "world_fd") else image.norm(value) < 0.5
                    ax.text(j, i, f"{value:.3g}", ha="center", va="center", color="black" if bright else "white", fontsize=8)
            ax.set_xticks(range(len(models)), names, fontsize=7, rotation=20)
            ax.set_yticks(range(len(rows)), list(rows) if column == columns[0] else [""] * len(rows), fontsize=7)
            ax.set_title(TITLES.get(column, column), fontsize=9)
        return save_figure(fig, png, "sharpener (rows) applied to base model (columns), paper Fig. 6")
    return write_figure(driver.out, "transfer_matrix", data, plot)


def cli(argv=None):
    p = parser("figures/transfer_matrix.py", __doc__)
    p.add_argument("--sharpeners", nargs="+", required=True, help="experiment ids, run/checkpoint folders or Hub repo ids")
    p.add_argument("--models", nargs="+", required=True, help="base models: hub ids, diffusers folders or single .safetensors files")
    p.add_argument("--single_file_config", default=None, help="diffusers folder with the configuration of single-file models (offline)")
    p.add_argument("--steps", type=positive_int, default=20)
    args = p.parse_args(argv)
    quiet_threads()
    return transfer_matrix(Driver.from_args(args), args.sharpeners, args.models, args.steps, args.single_file_config)
