"""The paper's Table 1 built from results.jsonl (evaluation.record), with its plot.

The table has one row per sampling configuration (every image-defining option but the prompt set):
FID / CLIP / AS come from its COCO 5k folder, the HPS v2.1 columns from its hps-<style> folders and
DrawBench from its drawbench folder, each the latest value. A row says what produced it (method,
base model, the model the sharpener was trained on, its preset and training step, alpha, w, s, steps, NFE,
prompt sets and counts, resolution, negative prompt, null embedding, output filters off), and a metric gets the paper's Table 1 number
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
from pathlib import Path

from dice.paper import GUIDANCE_SCALE, SAMPLING_STEPS, SCHEDULER, TABLE1, paper_model
from dice.presets import MODELS, same_base_model
from dice.sampling import image_defining

from .plotting import pyplot, save_figure
from .record import SMOKE_TEST_NOTE, read_results

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

METHOD_ORDER = ("cfg", "unguided", "scaling", "scaling+cfg", "gd", "pnp", "dice", "dice+cfg")


def paper_model_name(base_model: str | None) -> str | None:
    """'SD1.5', 'DreamShaper', ... for the hub id of a base model with a Table 1 block, else None."""
    model = paper_model(base_model)
    return model.name if model and model.name in TABLE1 else None


def paper_row_key(options: dict) -> str | None:
    """'w=5', 'w=1', 'Scaling', 'GD', 'PnP' or 'DICE' when the sampling method and knobs are those of a
    Table 1 row (the paper's s for Scaling, ω = 5 for GD and PnP)."""
    method, scale, alpha = options.get("method"), options.get("cfg_scale"), options.get("alpha")
    if method == "scaling":
        model = paper_model(options.get("base_model"))
        return "Scaling" if model and options.get("embedding_scale") == model.embedding_scale else None
    if method in ("gd", "pnp"):
        return {"gd": "GD", "pnp": "PnP"}[method] if options.get("gd_scale") == GUIDANCE_SCALE else None
    if options.get("embedding_scale") not in (None, 1):  # the Scaling baseline's rows are not these
        return None
    if method == "cfg" and scale == GUIDANCE_SCALE:
        return None if options.get("negative_prompt") else "w=5"  # Table 1's CFG uses the empty negative prompt
    if method == "unguided" or (method == "cfg" and scale == 1):
        return "w=1"
    if method == "dice" and alpha in (None, 1) and scale in (None, 1):
        return "DICE"
    return None


def is_cross_model(options: dict) -> bool:
    """A sharpener (or PnP guide) applied to another base model than it was trained on (paper Fig. 6)."""
    trained = options.get("sharpener_base_model") or options.get("trained_base_model")
    return bool(trained) and not same_base_model(trained, options.get("base_model"))


def protocol_mismatch(options: dict) -> str | None:
    """Why a folder's sampling does not repeat the paper's protocol (None when it does)."""
    model = paper_model_name(options.get("base_model"))
    resolution = paper_model(options.get("base_model")).resolution if model else None
    prompts, count = options.get("prompts") or "coco5k", options.get("num_images")
    whole_set = 5000 if prompts == "coco5k" else options.get("prompt_set_size")
    step, final_step = trained_step(options), _first_set(options, "sharpener_max_train_steps", "trained_max_train_steps")
    checks = [
        (model is not None, "not a paper base model"),
        (paper_row_key(options) is not None, "not a Table 1 method/setting"),
        (options.get("steps") == SAMPLING_STEPS, f"{options.get('steps')} steps, not {SAMPLING_STEPS}"),
        (options.get("scheduler", SCHEDULER) == SCHEDULER, f"scheduler {options.get('scheduler')}"),
        (options.get("resolution") == resolution, f"{options.get('resolution')} px, not the paper's {resolution}"),
        (prompts in TABLE1_PROMPT_SETS, f"prompts {prompts}"),
        (count is not None and count == whole_set, f"{count} of the {whole_set or '?'} prompts of {prompts}"),
        (not is_cross_model(options), "a sharpener of another base model"),
        (options.get("method") not in ("dice", "gd", "pnp") or (step is not None and step == final_step),
         f"checkpoint of step {step}, not the final one"),
        # Folders sampled before these choices were fixed (docs/authors_code.md): SD1.5's safety checker blacked out
        # flagged images; SDXL's CFG baseline used the encoded "" instead of the stock pipeline's zeros.
        (options.get("family") != "sd15" or "safety_checker" in (options.get("output_filters_off") or []),
         "sampled with the safety checker on"),
        (not (options.get("family") == "sdxl" and options.get("method") in ("cfg", "scaling+cfg"))
         or options.get("null_embedding") == "zeros", "CFG baseline without the stock pipeline's null embedding"),
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
    return TABLE1[paper_model_name(options["base_model"])][paper_row_key(options)]


def column_of(record: dict) -> str:
    """The table column of a result line: its metric, or for HPS the prompt set it was scored on."""
    if record["metric"] != "hps":
        return record["metric"]
    return HPS_COLUMNS.get((record.get("sampling_options") or {}).get("prompts"), "hps")


def configuration_key(options: dict | None, folder: str) -> str:
    """Folders of one configuration (all image-defining options but the Table 1 prompt set) share a row."""
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
            # What else produced the pixels (docs/authors_code.md): the trained model's preset, the empty prompt's u,
            # the stock output filters switched off.
            "preset": options.get("trained_preset"),
            "null_embedding": options.get("null_embedding") or (options.get("family_options") or {}).get("empty_prompt"),
            "output_filters_off": ", ".join(options.get("output_filters_off") or []),
            "counts": run["counts"],
            "values": run["values"],
            "paper": {} if smoke_test else {c: v for c, v in run["paper"].items() if v is not None},
            "why_not_paper": {c: why for c, why in run["why_not"].items() if why},
            "smoke_test": smoke_test,
            "images": folders[0] if len(folders) == 1 else " ".join(folders),
            "_order": (  # paper models in Table 1 order, then other models, then folders without options
                list(TABLE1).index(model) if model else len(TABLE1) + (not options),
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
    header = ["model", "method", "trained on", "preset", "step", "α", "w", "s", "ω", "steps", "NFE", "params", "prompts (N)",
              "res", "negative"]
    header += [f"{METRIC_TITLES[m]} (paper)" if m in PAPER_METRICS else METRIC_TITLES[m] for m in metrics] + ["images"]
    any_smoke = any(row.get("smoke_test") for row in rows)
    if any_smoke:
        header.append("note")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["model"], row["method"], row.get("sharpener_model", ""), row.get("preset") or "",
                 _knob(row.get("sharpener_step")),
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
              "embedding_scale", "gd_scale", "steps", "nfe", "params", "prompts", "resolution", "negative_prompt", "preset",
              "null_embedding", "output_filters_off")


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
