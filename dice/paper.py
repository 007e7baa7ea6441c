"""Every fact of the paper (and of the authors' released scripts) this repository uses, once.

Presets (:mod:`dice.presets`), the results table (:mod:`evaluation.table`), the sampler's defaults and
launch.sh (through ``python -m dice.recipes``) all read them from here. Sources: the paper (AAAI 2026 /
arXiv v2) and SPEC sections 2-6; "authors" marks what only the authors' code says.
"""
from __future__ import annotations

from dataclasses import dataclass

# ---- the method (paper sections 3-4, A.1) ----------------------------------------------------------------
GUIDANCE_SCALE = 5.0  # w of the CFG teacher in every experiment, and the ω GD and PnP are sampled at (Table 1)
SHARPENER_INNER_DIM = 512  # A.1: cross-attention 512 wide with 8 heads ("insensitive to model structure")
SHARPENER_HEADS = 8

# ---- sampling and evaluation (section 4, SPEC section 5) -----------------------------------------------------
SAMPLING_STEPS = 20
SCHEDULER = "dpmsolver++"  # DPM-Solver++ (2M)
EVALUATION_PROMPTS = 5000  # one caption per MS-COCO val2017 image (the coco5k prompt set)


# ---- the base models (SPEC section 3, Table 1, Fig. 6) ---------------------------------------------------------
@dataclass(frozen=True)
class PaperModel:
    name: str  # as Table 1 and Fig. 6 write it
    family: str
    hub_ids: tuple[str, ...]  # the first is the one loaded; others name the same weights
    resolution: int  # what the paper trained and sampled at
    embedding_scale: float | None = None  # Scaling's s (Table 1); None: no Scaling row


MODELS: dict[str, PaperModel] = {  # by the short name sample.py --model_name and launch.sh use
    "sd15": PaperModel("SD1.5", "sd15", ("stable-diffusion-v1-5/stable-diffusion-v1-5", "runwayml/stable-diffusion-v1-5"),
                       512, 1.2),
    "dreamshaper": PaperModel("DreamShaper", "sd15", ("Lykon/DreamShaper",), 512, 1.3),
    "absolutereality": PaperModel("AbsoluteReality v1.8.1", "sd15", ("digiplay/AbsoluteReality_v1.8.1",), 512),
    "animepasteldream": PaperModel("Anime Pastel Dream", "sd15", ("Lykon/AnimePastelDream",), 512),
    "sdxl": PaperModel("SDXL", "sdxl", ("stabilityai/stable-diffusion-xl-base-1.0",), 1024, 1.5),
    "pixart": PaperModel("PixArt-α", "pixart", ("PixArt-alpha/PixArt-XL-2-512x512",), 512, 1.2),
    "pixart-1024": PaperModel("PixArt-α", "pixart", ("PixArt-alpha/PixArt-XL-2-1024-MS",), 1024, 1.2),
}
# The VAE the authors trained and sampled SDXL with (fp16-safe), by the name launch.sh uses.
VAES: dict[str, str] = {"sdxl-vae": "madebyollin/sdxl-vae-fp16-fix"}
# The variants trained with negative prompts (section 4.1) by `launch.sh train-variants`.
VARIANTS = ("dreamshaper", "absolutereality", "animepasteldream")


def paper_model(base_model: str | None) -> PaperModel | None:
    """The paper's model a hub id names (case-insensitive), else None."""
    wanted = str(base_model or "").strip().rstrip("/").lower()
    return next((m for m in MODELS.values() if wanted in (h.lower() for h in m.hub_ids)), None)


# ---- the training recipe (section 4, SPEC section 4) ---------------------------------------------------------
RECIPE = dict(  # the paper: Adam, lr 2e-4, batch 128 (16 per GPU x 8), ~8,000 updates, w = 5, squared error
    learning_rate=2e-4, lr_scheduler="constant", lr_warmup_steps=0, adam_weight_decay=0.0,
    guidance_scale=GUIDANCE_SCALE, loss_type="mse", loss_reduction="mean", shared_timestep=False,
    max_train_steps=8000, checkpointing_steps=800, gradient_accumulation_steps=1, train_batch_size=16,
)
AUTHORS_RECIPE = dict(  # authors' launch scripts, where they differ: AdamW wd 1e-2; the loss summed over the micro-batch
    # and divided by the global batch; one t per global batch; the bf16-cast networks called under torch.autocast("cuda")
    adam_weight_decay=1e-2, loss_reduction="sum_per_global_batch", shared_timestep=True, denoiser_autocast="fp16",
)
AUTHORS_FAMILY = {  # authors' per-family scripts: SD1.5 L1; SDXL squared error, 8 per GPU, 4,000 updates
    "sd15": dict(loss_type="l1"),
    "sdxl": dict(loss_type="mse", train_batch_size=8, max_train_steps=4000, checkpointing_steps=400),
    "pixart": dict(loss_type="mse"),  # no official PixArt script: the SDXL script's conventions
}
# GD and PnP as the authors re-implemented them (launch_gd.sh / launch_pnp.sh): AdamW lr 5e-5, wd 1e-2, squared error
# summed per sample, the teacher's scale ω ~ U[2, 14) given to the student. The paper gives no recipe for them.
DISTILLED_GUIDANCE_RECIPE = dict(
    learning_rate=5e-5, adam_weight_decay=1e-2, loss_type="mse", loss_reduction="sum_per_sample",
    guidance_scale=None, guidance_scale_range=[2.0, 14.0],
)
# ... and as their scripts run exactly (--preset authors): the loss divided by the global batch, one ω per global batch
# (drawn by the same seeded `random` stream on every GPU), and GD's student told int(ω) while the teacher uses ω.
AUTHORS_DISTILLED_GUIDANCE = dict(loss_reduction="sum_per_global_batch", omega_draw="batch")
AUTHORS_GD = dict(omega_student_input="integer")

# Which run produced each Table-1 block's published numbers, so `launch.sh table1 <block>` trains with that preset
# (docs/authors_code.md gives the evidence). SD1.5, DreamShaper, SDXL: the authors' released launch script
# (scripts/launch_dice.sh trains exactly DreamShaper and SDXL with these settings; the released code cannot train
# with negative prompts at all). PixArt-α: no released code, so the paper's text.
TABLE1_PRESETS = {"sd15": "authors", "dreamshaper": "authors", "sdxl": "authors", "pixart": "paper"}

# ---- Table 1 (AAAI / arXiv v2; SPEC section 6) ---------------------------------------------------------------
# 20 sampling steps: "w=5" is CFG (NFE 40), "w=1" unguided (NFE 20), "Scaling" the prompt embedding times the
# model's s (NFE 20), "GD" / "PnP" the trained baselines at ω = 5 (NFE 20 / ≈28-30), "DICE" unguided on the
# sharpened embedding (NFE 20). Columns: FID, CLIP score, aesthetic score, HPS v2.1 anime / concept-art /
# painting / photo, DrawBench (HPS v2.1).
TABLE1_COLUMNS = ("fid", "clip_score", "aesthetic", "hps_anime", "hps_concept", "hps_painting", "hps_photo", "drawbench")
_TABLE1_ROWS = {
    "SD1.5": {
        "w=5": (22.04, 30.22, 5.36, 24.29, 23.16, 22.88, 24.62, 23.83),
        "w=1": (32.80, 21.99, 5.03, 17.79, 17.69, 17.40, 19.41, 18.43),
        "Scaling": (32.54, 22.89, 5.13, 18.11, 17.94, 17.73, 19.57, 18.80),
        "GD": (23.54, 28.02, 5.30, 21.84, 20.58, 20.19, 23.48, 21.99),
        "PnP": (26.57, 27.72, 5.39, 23.17, 21.72, 22.03, 24.17, 23.12),
        "DICE": (22.22, 28.54, 5.28, 22.78, 20.67, 20.71, 24.96, 23.32),
    },
    "DreamShaper": {
        "w=5": (30.35, 30.50, 5.87, 30.20, 28.92, 28.85, 27.62, 26.84),
        "w=1": (24.17, 27.22, 5.74, 24.42, 24.44, 24.61, 23.56, 22.05),
        "Scaling": (24.05, 27.74, 5.73, 24.63, 24.44, 24.47, 23.66, 22.19),
        "GD": (32.53, 28.48, 5.86, 28.34, 27.50, 27.59, 26.40, 25.27),
        "PnP": (35.57, 28.46, 5.87, 29.53, 28.72, 28.80, 27.35, 26.04),
        "DICE": (30.36, 29.03, 5.87, 29.17, 28.44, 28.49, 27.27, 25.77),
    },
    "SDXL": {
        "w=5": (23.95, 32.10, 5.60, 29.67, 28.19, 28.19, 26.51, 26.03),
        "w=1": (61.19, 21.92, 5.59, 19.64, 19.23, 19.92, 18.74, 17.65),
        "Scaling": (59.14, 23.50, 5.60, 20.33, 20.03, 20.51, 19.07, 17.94),
        "GD": (28.88, 30.84, 5.57, 28.83, 27.65, 28.11, 26.39, 25.43),
        "PnP": (32.52, 30.31, 5.76, 29.29, 27.59, 28.15, 26.44, 25.35),
        "DICE": (28.01, 30.63, 5.68, 29.06, 27.72, 28.10, 26.48, 25.44),
    },
    "PixArt-α": {
        "w=5": (38.39, 30.67, 6.03, 31.43, 29.97, 29.60, 28.97, 27.95),
        "w=1": (41.74, 25.30, 6.11, 26.29, 25.73, 25.90, 23.63, 23.23),
        "Scaling": (41.89, 25.79, 6.10, 26.26, 25.60, 25.60, 23.73, 23.25),
        "GD": (42.77, 28.52, 6.06, 28.94, 27.09, 27.62, 26.68, 26.04),
        "PnP": (40.06, 29.55, 5.99, 29.29, 28.24, 27.96, 26.55, 25.55),
        "DICE": (39.80, 29.51, 6.01, 30.10, 28.59, 28.69, 27.91, 26.60),
    },
}
TABLE1: dict[str, dict[str, dict[str, float]]] = {
    model: {row: dict(zip(TABLE1_COLUMNS, values)) for row, values in rows.items()} for model, rows in _TABLE1_ROWS.items()
}
