"""results.jsonl (one line per scored folder and metric) and the paper's Table 1 built from it.

Each line: {"metric", "value", "count", "images", "sampling_options", "options", "time", "seconds"}.
The table has one row per image folder (a sampling run) and, per metric, its latest value, with
the paper's Table 1 number beside it when the run matches a paper row (SPEC §6). Values scored
with the evaluators' ``--smoke_test`` (random-weight stand-in networks, ``options.smoke_test``) are
flagged, and such rows never get the paper's numbers beside them.
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

METRICS = ("fid", "clip_score", "aesthetic", "world_accuracy", "world_fd")
METRIC_TITLES = {"fid": "FID", "clip_score": "CLIP", "aesthetic": "AS", "world_accuracy": "accuracy (world)", "world_fd": "FD (world)"}
PAPER_METRICS = METRICS[:3]  # always in the Markdown table; the shapes world's own two only when scored

# Paper Table 1 (AAAI / arXiv v2; SPEC §6), 20 sampling steps: "w=5" is CFG (NFE 40), "w=1" unguided
# (NFE 20), "Scaling" the prompt embedding times the model's s (NFE 20), "GD" / "PnP" the trained
# baselines at ω = 5 (NFE 20 / ≈28-30), "DICE" the sharpened embeddings unguided (NFE 20).
PAPER_TABLE1 = {
    "SD1.5": {
        "w=5": {"fid": 22.04, "clip_score": 30.22, "aesthetic": 5.36},
        "w=1": {"fid": 32.80, "clip_score": 21.99, "aesthetic": 5.03},
        "Scaling": {"fid": 32.54, "clip_score": 22.89, "aesthetic": 5.13},
        "GD": {"fid": 23.54, "clip_score": 28.02, "aesthetic": 5.30},
        "PnP": {"fid": 26.57, "clip_score": 27.72, "aesthetic": 5.39},
        "DICE": {"fid": 22.22, "clip_score": 28.54, "aesthetic": 5.28},
    },
    "DreamShaper": {
        "w=5": {"fid": 30.35, "clip_score": 30.50, "aesthetic": 5.87},
        "w=1": {"fid": 24.17, "clip_score": 27.22, "aesthetic": 5.74},
        "Scaling": {"fid": 24.05, "clip_score": 27.74, "aesthetic": 5.73},
        "GD": {"fid": 32.53, "clip_score": 28.48, "aesthetic": 5.86},
        "PnP": {"fid": 35.57, "clip_score": 28.46, "aesthetic": 5.87},
        "DICE": {"fid": 30.36, "clip_score": 29.03, "aesthetic": 5.87},
    },
    "SDXL": {
        "w=5": {"fid": 23.95, "clip_score": 32.10, "aesthetic": 5.60},
        "w=1": {"fid": 61.19, "clip_score": 21.92, "aesthetic": 5.59},
        "Scaling": {"fid": 59.14, "clip_score": 23.50, "aesthetic": 5.60},
        "GD": {"fid": 28.88, "clip_score": 30.84, "aesthetic": 5.57},
        "PnP": {"fid": 32.52, "clip_score": 30.31, "aesthetic": 5.76},
        "DICE": {"fid": 28.01, "clip_score": 30.63, "aesthetic": 5.68},
    },
    "PixArt-α": {
        "w=5": {"fid": 38.39, "clip_score": 30.67, "aesthetic": 6.03},
        "w=1": {"fid": 41.74, "clip_score": 25.30, "aesthetic": 6.11},
        "Scaling": {"fid": 41.89, "clip_score": 25.79, "aesthetic": 6.10},
        "GD": {"fid": 42.77, "clip_score": 28.52, "aesthetic": 6.06},
        "PnP": {"fid": 40.06, "clip_score": 29.55, "aesthetic": 5.99},
        "DICE": {"fid": 39.80, "clip_score": 29.51, "aesthetic": 6.01},
    },
}
# The paper's Scaling s per model (Table 1) and the scale GD / PnP are sampled at.
PAPER_EMBEDDING_SCALES = {"SD1.5": 1.2, "DreamShaper": 1.3, "SDXL": 1.5, "PixArt-α": 1.2}
PAPER_GD_SCALE = 5
PAPER_STEPS = 20

# Hub ids of the paper's base models (compared case-insensitively).
PAPER_MODEL_IDS = {
    "SD1.5": ("stable-diffusion-v1-5/stable-diffusion-v1-5", "runwayml/stable-diffusion-v1-5"),
    "DreamShaper": ("Lykon/DreamShaper",),
    "SDXL": ("stabilityai/stable-diffusion-xl-base-1.0",),
    "PixArt-α": ("PixArt-alpha/PixArt-XL-2-512x512", "PixArt-alpha/PixArt-XL-2-1024-MS"),
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


def paper_model_name(base_model: str | None) -> str | None:
    """'SD1.5', 'DreamShaper', ... for a paper base model's hub id, else None."""
    if not base_model:
        return None
    wanted = str(base_model).strip().rstrip("/").lower()
    for name, ids in PAPER_MODEL_IDS.items():
        if wanted in (i.lower() for i in ids):
            return name
    return None


def paper_row_key(options: dict) -> str | None:
    """'w=5', 'w=1', 'Scaling', 'GD', 'PnP' or 'DICE' when sampling options match a Table 1 row (20 steps,
    COCO 5k prompts, the paper's s for Scaling, ω = 5 for GD and PnP)."""
    if options.get("steps") != PAPER_STEPS or options.get("prompts") not in (None, "coco5k"):
        return None
    method, scale, alpha = options.get("method"), options.get("cfg_scale"), options.get("alpha")
    if method == "scaling":
        s = PAPER_EMBEDDING_SCALES.get(paper_model_name(options.get("base_model")))
        return "Scaling" if options.get("embedding_scale") == s else None
    if method in ("gd", "pnp"):
        return {"gd": "GD", "pnp": "PnP"}[method] if options.get("gd_scale") == PAPER_GD_SCALE else None
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


def paper_values(options: dict | None) -> dict | None:
    if not options or is_cross_model(options):  # Table 1 applies each sharpener to its own model
        return None
    model, row = paper_model_name(options.get("base_model")), paper_row_key(options)
    return PAPER_TABLE1.get(model, {}).get(row) if model and row else None


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
    """One row per image folder: run description and the latest value of each metric."""
    runs: dict[str, dict] = {}
    for record in records:  # file order is append order: a later line replaces an earlier one
        run = runs.setdefault(os.path.normpath(record["images"]), {"values": {}, "counts": {}, "smoke": {}})
        run["options"] = record.get("sampling_options") or {}
        run["values"][record["metric"]] = record["value"]
        run["counts"][record["metric"]] = record.get("count")
        run["smoke"][record["metric"]] = bool((record.get("options") or {}).get("smoke_test"))
    rows = []
    for folder, run in runs.items():
        options = run["options"]
        model = paper_model_name(options.get("base_model"))
        smoke_test = any(run["smoke"].values())  # random-weight stand-ins: never beside the paper's numbers
        trained_on = options.get("sharpener_base_model")
        rows.append({
            "model": model_label(options.get("base_model")),
            "sharpener_model": (paper_model_name(trained_on) or trained_on) if trained_on else "",
            "cross_model": is_cross_model(options),
            "method": options.get("method", ""),
            "guidance": _guidance_label(options),
            "steps": options.get("steps"),
            "nfe": options.get("nfe"),
            "params": options.get("trainable_parameters"),
            "counts": run["counts"],
            "values": run["values"],
            "paper": {} if smoke_test else paper_values(options) or {},
            "smoke_test": smoke_test,
            "images": folder,
            "_order": (  # paper models in Table 1 order, then other models, then folders without options
                list(PAPER_MODEL_IDS).index(model) if model else len(PAPER_MODEL_IDS) + (not options),
                model or options.get("base_model") or "",
                METHOD_ORDER.index(options.get("method")) if options.get("method") in METHOD_ORDER else 99,
                -(options.get("cfg_scale") or 0),
                options.get("alpha") or 0,
                options.get("steps") or 0,
                folder,
            ),
        })
    rows.sort(key=lambda row: row.pop("_order"))
    return rows


def _format(value) -> str:
    return "" if value is None else f"{value:.2f}"


def format_markdown(rows: list[dict]) -> str:
    metrics = [m for m in METRICS if m in PAPER_METRICS or any(m in row["values"] for row in rows)]
    header = ["model", "method", "w / α / s / ω", "steps", "NFE", "params", "N"]
    header += [f"{METRIC_TITLES[m]} (paper)" if m in PAPER_METRICS else METRIC_TITLES[m] for m in metrics] + ["images"]
    any_smoke = any(row.get("smoke_test") for row in rows)
    any_cross = any(row.get("cross_model") for row in rows)
    if any_cross:
        header.append("sharpener trained on")
    if any_smoke:
        header.append("note")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        counts = sorted({c for c in row["counts"].values() if c is not None})
        cells = [row["model"], row["method"], row["guidance"], str(row["steps"] or ""), str(row["nfe"] or ""),
                 format_parameters(row.get("params"))]
        cells.append("/".join(str(c) for c in counts))
        for metric in metrics:
            cell = _format(row["values"].get(metric))
            if metric in row["paper"]:
                cell = f"{cell or '–'} ({_format(row['paper'][metric])})"
            cells.append(cell)
        cells.append(f"`{row['images']}`")
        if any_cross:
            cells.append(row.get("sharpener_model", ""))
        if any_smoke:
            cells.append(f"**{SMOKE_TEST_NOTE}**" if row.get("smoke_test") else "")
        lines.append("| " + " | ".join(cells) + " |")
    note = (
        "\nValues: latest per image folder and metric. In brackets: paper Table 1 (AAAI / arXiv v2) "
        "where the run matches a paper row (same base model, 20 steps, COCO 5k prompts, w=5 / w=1 / Scaling at the "
        "paper's s / GD and PnP at ω=5 / DICE α=1). NFE: network evaluations for all steps (CFG 2 per step; PnP's guide "
        "counted by its parameters relative to the denoiser's, as the paper's ≈28). params: trainable parameters."
    )
    if any_smoke:
        note += (
            f"\n\n**{SMOKE_TEST_NOTE}**: scored with the evaluators' `--smoke_test`, i.e. tiny random-weight "
            "stand-ins for Inception / CLIP / the aesthetic head. These numbers are meaningless and not comparable "
            "to the paper or to each other: they only show that sampling, scoring and this table work end to end."
        )
    return "\n".join(lines) + "\n" + note + "\n"


def format_csv(rows: list[dict]) -> str:
    columns = ["model", "method", "guidance", "steps", "nfe", "params"]
    for metric in METRICS:
        columns += [metric, f"{metric}_paper", f"{metric}_count"]
    columns += ["images", "smoke_test", "sharpener_model"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        line = {key: row[key] for key in ("model", "method", "guidance", "steps", "nfe", "params", "images")}
        line["smoke_test"] = row.get("smoke_test", False)
        line["sharpener_model"] = row.get("sharpener_model", "")
        for metric in METRICS:
            line[metric] = row["values"].get(metric)
            line[f"{metric}_paper"] = row["paper"].get(metric)
            line[f"{metric}_count"] = row["counts"].get(metric)
        writer.writerow(line)
    return buffer.getvalue()


def write_table(results_path: str | os.PathLike, out_prefix: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``<out_prefix>.md``, ``.csv`` and ``.json`` (the rows) from results.jsonl; return the first two."""
    rows = build_table(read_results(results_path))
    markdown, csv_path = Path(f"{out_prefix}.md"), Path(f"{out_prefix}.csv")
    markdown.parent.mkdir(parents=True, exist_ok=True)
    markdown.write_text(format_markdown(rows), encoding="utf-8")
    csv_path.write_text(format_csv(rows), encoding="utf-8")
    Path(f"{out_prefix}.json").write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return markdown, csv_path
