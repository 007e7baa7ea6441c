"""results.jsonl (one line per scored folder and metric) and the paper's Table 1 built from it.

Each line: {"metric", "value", "count", "images", "sampling_options", "options", "time", "seconds"}.
The table has one row per sampling configuration (every image-defining option but the prompt set):
FID / CLIP / AS come from its COCO 5k folder, the HPS v2.1 columns from its hps-<style> folders and
DrawBench from its drawbench folder, each the latest value. A row says what produced it (method,
base model, the model the sharpener was trained on, its training step, alpha, w, s, steps, NFE,
prompt sets and counts, resolution, negative prompt), and a metric gets the paper's Table 1 number
beside it only when its folder repeats the paper's protocol (SPEC §5-6): a paper base model at the
paper's resolution, 20 DPM-Solver++ steps, the whole prompt set, the sharpener's final checkpoint on
its own base model, and the paper's row (w=5 with the empty negative prompt, w=1, Scaling at the paper's s,
GD and PnP at omega=5, DICE alpha=1).
Values scored with the evaluators' ``--smoke_test`` (random-weight stand-in networks,
``options.smoke_test``) are flagged, and such rows never get the paper's numbers beside them.
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from dice.errors import UserError

# Table columns: a metric, or for HPS v2.1 the prompt set it was scored on (Table 1's HPS and DrawBench).
HPS_COLUMNS = {"hps-anime": "hps_anime", "hps-concept-art": "hps_concept", "hps-paintings": "hps_painting",
               "hps-photo": "hps_photo", "drawbench": "drawbench"}
PAPER_METRICS = ("fid", "clip_score", "aesthetic", *HPS_COLUMNS.values())  # always in the Markdown table
METRICS = (*PAPER_METRICS, "hps", "world_accuracy", "world_fd")  # hps: HPS v2.1 on any other prompt set
METRIC_TITLES = {"fid": "FID", "clip_score": "CLIP", "aesthetic": "AS", "hps_anime": "HPS anime", "hps_concept": "HPS concept",
                 "hps_painting": "HPS painting", "hps_photo": "HPS photo", "drawbench": "DrawBench (HPS)",
                 "hps": "HPS v2.1", "world_accuracy": "accuracy (world)", "world_fd": "FD (world)"}
LOWER_IS_BETTER = {"fid", "world_fd"}
TABLE1_PROMPT_SETS = ("coco5k", *HPS_COLUMNS)  # the folders that make up one Table 1 row

# Paper Table 1 (AAAI / arXiv v2; SPEC §6), 20 sampling steps: "w=5" is CFG (NFE 40), "w=1" unguided
# (NFE 20), "Scaling" the prompt embedding times the model's s (NFE 20), "GD" / "PnP" the trained
# baselines at ω = 5 (NFE 20 / ≈28-30), "DICE" the sharpened embeddings unguided (NFE 20).
# HPS v2.1 columns in the order anime, concept-art, painting, photo, then DrawBench.
_HPS_KEYS = tuple(HPS_COLUMNS.values())
PAPER_TABLE1 = {
    "SD1.5": {
        "w=5": {"fid": 22.04, "clip_score": 30.22, "aesthetic": 5.36, **dict(zip(_HPS_KEYS, (24.29, 23.16, 22.88, 24.62, 23.83)))},
        "w=1": {"fid": 32.80, "clip_score": 21.99, "aesthetic": 5.03, **dict(zip(_HPS_KEYS, (17.79, 17.69, 17.40, 19.41, 18.43)))},
        "Scaling": {"fid": 32.54, "clip_score": 22.89, "aesthetic": 5.13, **dict(zip(_HPS_KEYS, (18.11, 17.94, 17.73, 19.57, 18.80)))},
        "GD": {"fid": 23.54, "clip_score": 28.02, "aesthetic": 5.30, **dict(zip(_HPS_KEYS, (21.84, 20.58, 20.19, 23.48, 21.99)))},
        "PnP": {"fid": 26.57, "clip_score": 27.72, "aesthetic": 5.39, **dict(zip(_HPS_KEYS, (23.17, 21.72, 22.03, 24.17, 23.12)))},
        "DICE": {"fid": 22.22, "clip_score": 28.54, "aesthetic": 5.28, **dict(zip(_HPS_KEYS, (22.78, 20.67, 20.71, 24.96, 23.32)))},
    },
    "DreamShaper": {
        "w=5": {"fid": 30.35, "clip_score": 30.50, "aesthetic": 5.87, **dict(zip(_HPS_KEYS, (30.20, 28.92, 28.85, 27.62, 26.84)))},
        "w=1": {"fid": 24.17, "clip_score": 27.22, "aesthetic": 5.74, **dict(zip(_HPS_KEYS, (24.42, 24.44, 24.61, 23.56, 22.05)))},
        "Scaling": {"fid": 24.05, "clip_score": 27.74, "aesthetic": 5.73, **dict(zip(_HPS_KEYS, (24.63, 24.44, 24.47, 23.66, 22.19)))},
        "GD": {"fid": 32.53, "clip_score": 28.48, "aesthetic": 5.86, **dict(zip(_HPS_KEYS, (28.34, 27.50, 27.59, 26.40, 25.27)))},
        "PnP": {"fid": 35.57, "clip_score": 28.46, "aesthetic": 5.87, **dict(zip(_HPS_KEYS, (29.53, 28.72, 28.80, 27.35, 26.04)))},
        "DICE": {"fid": 30.36, "clip_score": 29.03, "aesthetic": 5.87, **dict(zip(_HPS_KEYS, (29.17, 28.44, 28.49, 27.27, 25.77)))},
    },
    "SDXL": {
        "w=5": {"fid": 23.95, "clip_score": 32.10, "aesthetic": 5.60, **dict(zip(_HPS_KEYS, (29.67, 28.19, 28.19, 26.51, 26.03)))},
        "w=1": {"fid": 61.19, "clip_score": 21.92, "aesthetic": 5.59, **dict(zip(_HPS_KEYS, (19.64, 19.23, 19.92, 18.74, 17.65)))},
        "Scaling": {"fid": 59.14, "clip_score": 23.50, "aesthetic": 5.60, **dict(zip(_HPS_KEYS, (20.33, 20.03, 20.51, 19.07, 17.94)))},
        "GD": {"fid": 28.88, "clip_score": 30.84, "aesthetic": 5.57, **dict(zip(_HPS_KEYS, (28.83, 27.65, 28.11, 26.39, 25.43)))},
        "PnP": {"fid": 32.52, "clip_score": 30.31, "aesthetic": 5.76, **dict(zip(_HPS_KEYS, (29.29, 27.59, 28.15, 26.44, 25.35)))},
        "DICE": {"fid": 28.01, "clip_score": 30.63, "aesthetic": 5.68, **dict(zip(_HPS_KEYS, (29.06, 27.72, 28.10, 26.48, 25.44)))},
    },
    "PixArt-α": {
        "w=5": {"fid": 38.39, "clip_score": 30.67, "aesthetic": 6.03, **dict(zip(_HPS_KEYS, (31.43, 29.97, 29.60, 28.97, 27.95)))},
        "w=1": {"fid": 41.74, "clip_score": 25.30, "aesthetic": 6.11, **dict(zip(_HPS_KEYS, (26.29, 25.73, 25.90, 23.63, 23.23)))},
        "Scaling": {"fid": 41.89, "clip_score": 25.79, "aesthetic": 6.10, **dict(zip(_HPS_KEYS, (26.26, 25.60, 25.60, 23.73, 23.25)))},
        "GD": {"fid": 42.77, "clip_score": 28.52, "aesthetic": 6.06, **dict(zip(_HPS_KEYS, (28.94, 27.09, 27.62, 26.68, 26.04)))},
        "PnP": {"fid": 40.06, "clip_score": 29.55, "aesthetic": 5.99, **dict(zip(_HPS_KEYS, (29.29, 28.24, 27.96, 26.55, 25.55)))},
        "DICE": {"fid": 39.80, "clip_score": 29.51, "aesthetic": 6.01, **dict(zip(_HPS_KEYS, (30.10, 28.59, 28.69, 27.91, 26.60)))},
    },
}
# The paper's Scaling s per model (Table 1) and the scale GD / PnP are sampled at.
PAPER_EMBEDDING_SCALES = {"SD1.5": 1.2, "DreamShaper": 1.3, "SDXL": 1.5, "PixArt-α": 1.2}
PAPER_GD_SCALE = 5
PAPER_STEPS = 20
PAPER_SCHEDULER = "dpmsolver++"

# Hub ids of the paper's base models (compared case-insensitively) -> the resolution the paper sampled them at.
PAPER_MODEL_IDS = {
    "SD1.5": {"stable-diffusion-v1-5/stable-diffusion-v1-5": 512, "runwayml/stable-diffusion-v1-5": 512},
    "DreamShaper": {"Lykon/DreamShaper": 512},
    "SDXL": {"stabilityai/stable-diffusion-xl-base-1.0": 1024},
    "PixArt-α": {"PixArt-alpha/PixArt-XL-2-512x512": 512, "PixArt-alpha/PixArt-XL-2-1024-MS": 1024},
}
METHOD_ORDER = ("cfg", "unguided", "scaling", "scaling+cfg", "gd", "pnp", "dice", "dice+cfg")
SMOKE_TEST_NOTE = "smoke test (random weights)"


@dataclass
class MetricResult:
    metric: str
    value: float
    count: int
    images: str
    sampling_options: dict | None = None
    options: dict = field(default_factory=dict)
    seconds: float = 0.0
    per_image: list | None = field(default=None, repr=False)  # for paired statistics in-process; not written

    @classmethod
    def mean_over_processes(cls, metric, totals, processes, collection, options, allow_incomplete, started) -> "MetricResult":
        """The mean of per-image scores from ``totals`` = [sum, count] summed over all processes."""
        import time

        score_sum, count = processes.sum(totals).tolist()
        options.update(num_processes=processes.world_size, allow_incomplete=allow_incomplete)
        return cls(metric=metric, value=score_sum / count, count=int(count), images=collection.path,
                   sampling_options=collection.sampling_options, options=options, seconds=time.time() - started)

    def to_record(self) -> dict:
        return {
            "metric": self.metric,
            "value": self.value,
            "count": self.count,
            "images": self.images,
            "sampling_options": self.sampling_options,
            "options": self.options,
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(self.seconds, 3),
        }


def append_result(results_path: str | os.PathLike, result: MetricResult) -> dict:
    """Append one JSON line for ``result`` to results.jsonl (created with its folder) and return it."""
    record = result.to_record()
    Path(results_path).parent.mkdir(parents=True, exist_ok=True)
    with open(results_path, "a", encoding="utf-8") as file:
        file.write(json.dumps(record, ensure_ascii=False) + "\n")
    return record


class ResultsFileError(UserError, ValueError):
    pass


class ResultsNotFound(UserError, FileNotFoundError):
    pass


def read_results(results_path: str | os.PathLike) -> list[dict]:
    if not Path(results_path).is_file():
        raise ResultsNotFound(f"Results file not found: {results_path}. The evaluation/*.py calc commands write it; pass its path")
    records = []
    for line_number, line in enumerate(Path(results_path).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                record = json.loads(line)
                if not isinstance(record, dict) or not {"images", "metric", "value"} <= record.keys():
                    raise ValueError('not an object with "images", "metric" and "value"')
            except ValueError as error:
                raise ResultsFileError(
                    f"{results_path} line {line_number} is not a result ({error}). Delete that line (the calc commands append one per score)"
                ) from None
            records.append(record)
    return records


def _paper_model(base_model: str | None) -> tuple[str, int] | tuple[None, None]:
    """('SD1.5', 512), ... for a paper base model's hub id, else (None, None)."""
    wanted = str(base_model or "").strip().rstrip("/").lower()
    for name, ids in PAPER_MODEL_IDS.items():
        for hub_id, resolution in ids.items():
            if wanted == hub_id.lower():
                return name, resolution
    return None, None


def paper_model_name(base_model: str | None) -> str | None:
    """'SD1.5', 'DreamShaper', ... for a paper base model's hub id, else None."""
    return _paper_model(base_model)[0]


def paper_row_key(options: dict) -> str | None:
    """'w=5', 'w=1', 'Scaling', 'GD', 'PnP' or 'DICE' when the sampling method and knobs are those of a
    Table 1 row (the paper's s for Scaling, ω = 5 for GD and PnP)."""
    method, scale, alpha = options.get("method"), options.get("cfg_scale"), options.get("alpha")
    if method == "scaling":
        s = PAPER_EMBEDDING_SCALES.get(paper_model_name(options.get("base_model")))
        return "Scaling" if options.get("embedding_scale") == s else None
    if method in ("gd", "pnp"):
        return {"gd": "GD", "pnp": "PnP"}[method] if options.get("gd_scale") == PAPER_GD_SCALE else None
    if options.get("embedding_scale") not in (None, 1):  # the Scaling baseline's rows are not these
        return None
    if method == "cfg" and scale == 5:
        return None if options.get("negative_prompt") else "w=5"  # Table 1's CFG uses the empty negative prompt
    if method == "unguided" or (method == "cfg" and scale == 1):
        return "w=1"
    if method == "dice" and alpha in (None, 1) and scale in (None, 1):
        return "DICE"
    return None


def is_cross_model(options: dict) -> bool:
    """A sharpener (or PnP guide) applied to another base model than it was trained on (paper Fig. 6)."""
    trained = options.get("sharpener_base_model") or options.get("trained_base_model")
    return bool(trained) and trained != options.get("base_model")


def protocol_mismatch(options: dict) -> str | None:
    """Why a folder's sampling does not repeat the paper's protocol (None when it does)."""
    model, resolution = _paper_model(options.get("base_model"))
    prompts, count = options.get("prompts") or "coco5k", options.get("num_images")
    whole_set = 5000 if prompts == "coco5k" else options.get("prompt_set_size")
    step, final_step = trained_step(options), _first_set(options, "sharpener_max_train_steps", "trained_max_train_steps")
    checks = [
        (model is not None, "not a paper base model"),
        (paper_row_key(options) is not None, "not a Table 1 method/setting"),
        (options.get("steps") == PAPER_STEPS, f"{options.get('steps')} steps, not {PAPER_STEPS}"),
        (options.get("scheduler", PAPER_SCHEDULER) == PAPER_SCHEDULER, f"scheduler {options.get('scheduler')}"),
        (options.get("resolution") == resolution, f"{options.get('resolution')} px, not the paper's {resolution}"),
        (prompts in TABLE1_PROMPT_SETS, f"prompts {prompts}"),
        (count is not None and count == whole_set, f"{count} of the {whole_set or '?'} prompts of {prompts}"),
        (not is_cross_model(options), "a sharpener of another base model"),
        (options.get("method") not in ("dice", "gd", "pnp") or (step is not None and step == final_step),
         f"checkpoint of step {step}, not the final one"),
    ]
    return next((why for ok, why in checks if not ok), None)


def trained_step(options: dict) -> int | None:
    """The training step of the sharpener, GD denoiser or PnP guide a folder was sampled with."""
    return _first_set(options, "sharpener_step", "trained_step")


def _first_set(options: dict, *keys: str):
    return next((options[k] for k in keys if options.get(k) is not None), None)


def paper_values(options: dict | None) -> dict | None:
    """Table 1's numbers for a folder that repeats the paper's protocol, else None."""
    if not options or protocol_mismatch(options):
        return None
    return PAPER_TABLE1[paper_model_name(options["base_model"])][paper_row_key(options)]


def column_of(record: dict) -> str:
    """The table column of a result line: its metric, or for HPS the prompt set it was scored on."""
    if record["metric"] != "hps":
        return record["metric"]
    return HPS_COLUMNS.get((record.get("sampling_options") or {}).get("prompts"), "hps")


def configuration_key(options: dict | None, folder: str) -> str:
    """Folders of one configuration (all image-defining options but the Table 1 prompt set) share a row."""
    from dice.sampling import image_defining

    if not options:
        return folder
    prompts = options.get("prompts")
    key = image_defining(options)
    key["prompts"] = "table1" if (prompts or "coco5k") in TABLE1_PROMPT_SETS else prompts
    return json.dumps(key, sort_keys=True, default=str)


def _guidance_label(options: dict) -> str:
    method, scale, alpha = options.get("method"), options.get("cfg_scale"), options.get("alpha")
    alpha = 1 if alpha is None else alpha
    if method == "cfg":
        return f"w={scale:g}" if scale is not None else ""
    if method == "unguided":
        return "w=1"
    if method == "dice":
        return f"α={alpha:g}"
    if method == "dice+cfg":
        return f"α={alpha:g}, w={scale:g}" if scale is not None else f"α={alpha:g}"
    if method in ("scaling", "scaling+cfg"):
        label = f"s={options.get('embedding_scale'):g}"
        return f"{label}, w={scale:g}" if method == "scaling+cfg" else label
    if method in ("gd", "pnp"):
        return f"ω={options.get('gd_scale'):g}"
    return ""


def format_parameters(count: int | None) -> str:
    """Trainable parameters as Table 1 writes them (859M, 1.3B, 2M); "-" for a training-free row."""
    if not count:
        return "-"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:.3g}{unit}"
    return str(count)


def model_label(base_model: str | None) -> str:
    """The paper's name of a base model, else the short name sample.py knows it by, else as given."""
    from dice.presets import MODELS

    if not base_model:
        return ""
    short = next((name for name, (_, path) in MODELS.items() if path == base_model), None)
    return paper_model_name(base_model) or short or base_model


def build_table(records: list[dict]) -> list[dict]:
    """One row per sampling configuration: what produced it and the latest value of each column."""
    runs: dict[str, dict] = {}
    for record in records:  # file order is append order: a later line replaces an earlier one
        folder = os.path.normpath(record["images"])
        options = record.get("sampling_options") or {}
        column = column_of(record)
        smoke = bool((record.get("options") or {}).get("smoke_test"))  # stand-in scores get rows of their own
        run = runs.setdefault(configuration_key(options, folder) + ("|smoke" if smoke else ""), {"values": {}, "counts": {}, "smoke": {}, "folders": {},
                                                                    "paper": {}, "why_not": {}, "sets": {}})
        if (options.get("prompts") or "coco5k") == "coco5k" or "options" not in run:
            run["options"] = options  # the COCO folder describes the row
        run["values"][column], run["counts"][column], run["folders"][column] = record["value"], record.get("count"), folder
        run["smoke"][column] = smoke
        run["sets"][options.get("prompts") or ""] = options.get("num_images")
        paper = paper_values(options)
        run["paper"][column] = paper.get(column) if paper else None
        run["why_not"][column] = protocol_mismatch(options) if options else "no sampling options"
    rows = []
    for key, run in runs.items():
        options = run["options"]
        model = paper_model_name(options.get("base_model"))
        smoke_test = any(run["smoke"].values())  # random-weight stand-ins: never beside the paper's numbers
        trained_on = options.get("sharpener_base_model") or options.get("trained_base_model")
        folders = list(dict.fromkeys(run["folders"].values()))
        rows.append({
            "model": model_label(options.get("base_model")),
            "base_model": options.get("base_model") or "",
            "sharpener_model": model_label(trained_on),
            "cross_model": is_cross_model(options),
            "method": options.get("method", ""),
            "guidance": _guidance_label(options),
            "sharpener_step": trained_step(options),
            "alpha": options.get("alpha"),
            "cfg_scale": options.get("cfg_scale"),
            "embedding_scale": options.get("embedding_scale"),
            "gd_scale": options.get("gd_scale"),
            "steps": options.get("steps"),
            "nfe": options.get("nfe"),
            "params": options.get("trainable_parameters"),
            "prompts": ", ".join(f"{name} ({count})" for name, count in run["sets"].items() if name),
            "resolution": options.get("resolution"),
            "negative_prompt": options.get("negative_prompt"),
            "counts": run["counts"],
            "values": run["values"],
            "paper": {} if smoke_test else {c: v for c, v in run["paper"].items() if v is not None},
            "why_not_paper": {c: why for c, why in run["why_not"].items() if why},
            "smoke_test": smoke_test,
            "images": folders[0] if len(folders) == 1 else " ".join(folders),
            "_order": (  # paper models in Table 1 order, then other models, then folders without options
                list(PAPER_MODEL_IDS).index(model) if model else len(PAPER_MODEL_IDS) + (not options),
                model or options.get("base_model") or "",
                METHOD_ORDER.index(options.get("method")) if options.get("method") in METHOD_ORDER else 99,
                -(options.get("cfg_scale") or 0),
                options.get("alpha") or 0,
                options.get("steps") or 0,
                trained_step(options) or 0,
                key,
            ),
        })
    rows.sort(key=lambda row: row.pop("_order"))
    return rows


def _format(value) -> str:
    return "" if value is None else f"{value:.2f}"


def _knob(value) -> str:
    return "" if value is None else f"{value:g}"


def _negative(value) -> str:
    if isinstance(value, dict):  # drawn per image from the sharpener's training negatives
        return f"{len(value.get('negative_prompts', []))} trained negatives (p={value.get('negative_prompt_prob')})"
    return "" if not value else repr(value)


def format_markdown(rows: list[dict]) -> str:
    paper_rows = any(paper_model_name(row.get("base_model")) for row in rows)  # Table 1's columns, filled or not
    metrics = [m for m in METRICS if (m in PAPER_METRICS and paper_rows) or any(m in row["values"] for row in rows)]
    header = ["model", "method", "trained on", "step", "α", "w", "s", "ω", "steps", "NFE", "params", "prompts (N)", "res",
              "negative"]
    header += [f"{METRIC_TITLES[m]} (paper)" if m in PAPER_METRICS else METRIC_TITLES[m] for m in metrics] + ["images"]
    any_smoke = any(row.get("smoke_test") for row in rows)
    if any_smoke:
        header.append("note")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["model"], row["method"], row.get("sharpener_model", ""), _knob(row.get("sharpener_step")),
                 _knob(row.get("alpha")), _knob(row.get("cfg_scale")), _knob(row.get("embedding_scale")),
                 _knob(row.get("gd_scale")), str(row["steps"] or ""), str(row["nfe"] or ""),
                 format_parameters(row.get("params")), row.get("prompts", ""), _knob(row.get("resolution")),
                 _negative(row.get("negative_prompt"))]
        for metric in metrics:
            cell = _format(row["values"].get(metric))
            if metric in row["paper"]:
                cell = f"{cell or '–'} ({_format(row['paper'][metric])})"
            cells.append(cell)
        cells.append(" ".join(f"`{folder}`" for folder in row["images"].split(" ")))
        if any_smoke:
            cells.append(f"**{SMOKE_TEST_NOTE}**" if row.get("smoke_test") else "")
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    note = (
        "\nValues: latest per configuration and column; FID / CLIP / AS on the COCO prompts, HPS v2.1 on the HPS v2 "
        "benchmark styles, DrawBench = HPS v2.1 on DrawBench's prompts. In brackets: paper Table 1 (AAAI / arXiv v2), "
        "only where the folder repeats the paper's protocol (a paper base model at its resolution, 20 DPM-Solver++ steps, "
        "the whole prompt set, the final checkpoint on its own model, w=5 / w=1 / Scaling at the paper's s / GD and PnP at "
        "ω=5 / DICE α=1); the CSV says why not otherwise. NFE: network evaluations for all steps (CFG 2 per step; PnP's "
        "guide counted by its parameters relative to the denoiser's, as the paper's ≈28). params: trainable parameters."
    )
    if any_smoke:
        note += (
            f"\n\n**{SMOKE_TEST_NOTE}**: scored with the evaluators' `--smoke_test`, i.e. tiny random-weight "
            "stand-ins for Inception / CLIP / the aesthetic head. These numbers are meaningless and not comparable "
            "to the paper or to each other: they only show that sampling, scoring and this table work end to end."
        )
    return "\n".join(lines) + "\n" + note + "\n"


PROVENANCE = ("model", "base_model", "sharpener_model", "method", "guidance", "sharpener_step", "alpha", "cfg_scale",
              "embedding_scale", "gd_scale", "steps", "nfe", "params", "prompts", "resolution", "negative_prompt")


def format_csv(rows: list[dict]) -> str:
    columns = list(PROVENANCE)
    for metric in METRICS:
        columns += [metric, f"{metric}_paper", f"{metric}_count"]
    columns += ["images", "smoke_test", "why_not_paper"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        line = {key: row.get(key) for key in PROVENANCE}
        line["negative_prompt"] = _negative(row.get("negative_prompt"))
        line.update(images=row["images"], smoke_test=row.get("smoke_test", False),
                    why_not_paper="; ".join(f"{c}: {why}" for c, why in row.get("why_not_paper", {}).items()))
        for metric in METRICS:
            line[metric] = row["values"].get(metric)
            line[f"{metric}_paper"] = row["paper"].get(metric)
            line[f"{metric}_count"] = row["counts"].get(metric)
        writer.writerow(line)
    return buffer.getvalue()


def row_label(row: dict) -> str:
    """A row's name in a plot: model, method and its knobs (and the training step of a trained method)."""
    step = f" @{row['sharpener_step']}" if row.get("sharpener_step") is not None else ""
    return " ".join(part for part in (row["model"], row["method"], row["guidance"]) if part) + step


def plot_table(rows: list[dict], png: str | os.PathLike) -> Path | None:
    """One bar panel per scored column, a bar per row; the paper's value (where the protocol is the paper's)
    as a black tick on the bar, smoke-test rows grey. None when nothing is scored."""
    from dice.figures.common import pyplot, save_figure

    metrics = [m for m in METRICS if any(m in row["values"] for row in rows)]
    if not metrics:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(2.4 * len(metrics) + 2.6, 0.3 * len(rows) + 1.3),
                             sharey=True, squeeze=False)
    positions = list(range(len(rows)))
    colours = ["#b0b0b0" if row.get("smoke_test") else "#4c72b0" for row in rows]
    for ax, metric in zip(axes[0], metrics):
        values = [row["values"].get(metric) for row in rows]
        ax.barh(positions, [float("nan") if v is None else v for v in values], color=colours)
        for y, row in enumerate(rows):
            if row["paper"].get(metric) is not None:
                ax.plot([row["paper"][metric]], [y], marker="|", color="black", markersize=11, markeredgewidth=2)
        ax.set_title(f"{METRIC_TITLES[metric]}, {'lower' if metric in LOWER_IS_BETTER else 'higher'} is better", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].set_yticks(positions)
    axes[0][0].set_yticklabels([row_label(row) for row in rows], fontsize=7)
    axes[0][0].invert_yaxis()  # the table's order, top to bottom
    notes = ["black tick: paper Table 1 (same protocol only)"] if any(row["paper"] for row in rows) else []
    notes += ["grey: smoke test (random weights)"] if any(row.get("smoke_test") for row in rows) else []
    return save_figure(fig, Path(png), "; ".join(notes) or None)


def write_table(results_path: str | os.PathLike, out_prefix: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``<out_prefix>.md``, ``.csv``, ``.json`` (the rows) and ``.png`` (:func:`plot_table`) from
    results.jsonl; return the first two."""
    rows = build_table(read_results(results_path))
    markdown, csv_path = Path(f"{out_prefix}.md"), Path(f"{out_prefix}.csv")
    markdown.parent.mkdir(parents=True, exist_ok=True)
    markdown.write_text(format_markdown(rows), encoding="utf-8")
    csv_path.write_text(format_csv(rows), encoding="utf-8")
    Path(f"{out_prefix}.json").write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    plot_table(rows, f"{out_prefix}.png")
    return markdown, csv_path
