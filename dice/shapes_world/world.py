"""The shapes world: a deterministic generator of captioned 32x32 images where attribute binding matters.

Each image shows two objects on a dark background, one in the left half and one in the right half;
each object is one of six colours and one of four shapes. A caption names the left object first,
in one of three templates. A fixed tenth of the 576 (colour, shape, colour, shape) combinations
never appears in training data (the *unseen* split): sampling them tests compositional
generalisation, as prompts unlike any training caption do for a real model.

Everything is a pure function of integer seeds, so the same call gives the same images anywhere.
"""
from __future__ import annotations

import itertools
import json
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw
from tqdm.auto import tqdm

IMAGE_SIZE = 32
SUPERSAMPLE = 4  # drawn at 4x and box-filtered down: anti-aliased edges like a natural image
BACKGROUND = (40, 40, 40)
# Saturated, well separated hues: a colour error is a real error, never a judgement call.
COLOURS = {
    "red": (225, 35, 35),
    "green": (35, 190, 60),
    "blue": (45, 85, 235),
    "yellow": (240, 220, 40),
    "white": (240, 240, 240),
    "purple": (165, 60, 205),
}
SHAPES = ("circle", "square", "triangle", "cross")
TEMPLATES = (
    "a {c1} {s1} and a {c2} {s2}",
    "a {c1} {s1} next to a {c2} {s2}",
    "a {c1} {s1} on the left and a {c2} {s2} on the right",
)
# Every word a caption can contain (the world tokenizer makes each one a single token).
WORDS = tuple(dict.fromkeys([w for t in TEMPLATES for w in t.split() if not w.startswith("{")] + list(COLOURS) + list(SHAPES)))

UNSEEN_FRACTION = 0.1
SPLIT_SEED = 2026
SPLITS = ("train", "validation", "test")
_SPLIT_SEEDS = {"train": 1, "validation": 2, "test": 3}  # disjoint random streams per split


@dataclass(frozen=True)
class Combination:
    """What a caption says: (colour, shape) of the left object, then of the right object."""

    left_colour: str
    left_shape: str
    right_colour: str
    right_shape: str

    def caption(self, template: int = 0) -> str:
        return TEMPLATES[template].format(c1=self.left_colour, s1=self.left_shape, c2=self.right_colour, s2=self.right_shape)

    def attributes(self) -> tuple[str, str, str, str]:
        return (self.left_colour, self.left_shape, self.right_colour, self.right_shape)


# The evaluator predicts these four attributes; index order is the order of their vocabularies.
ATTRIBUTES = ("left_colour", "left_shape", "right_colour", "right_shape")
ATTRIBUTE_VALUES = {"left_colour": tuple(COLOURS), "left_shape": SHAPES, "right_colour": tuple(COLOURS), "right_shape": SHAPES}


def all_combinations() -> list[Combination]:
    return [Combination(*c) for c in itertools.product(COLOURS, SHAPES, COLOURS, SHAPES)]


def unseen_combinations() -> frozenset[Combination]:
    """The held-out tenth: never in training captions or images (a fixed draw, SPLIT_SEED)."""
    combos = all_combinations()
    random.Random(SPLIT_SEED).shuffle(combos)
    return frozenset(combos[: round(UNSEEN_FRACTION * len(combos))])


def seen_combinations() -> list[Combination]:
    unseen = unseen_combinations()
    return [c for c in all_combinations() if c not in unseen]


_CAPTION_RE = [
    re.compile("^" + re.escape(t).replace(r"\{c1\}", "(?P<c1>\\w+)").replace(r"\{s1\}", "(?P<s1>\\w+)")
               .replace(r"\{c2\}", "(?P<c2>\\w+)").replace(r"\{s2\}", "(?P<s2>\\w+)") + "$")
    for t in TEMPLATES
]


def parse_caption(caption: str) -> Combination | None:
    """The combination a world caption names, or None for any other text."""
    text = " ".join(caption.lower().strip().rstrip(".").split())
    for pattern in _CAPTION_RE:
        match = pattern.match(text)
        if match and match["c1"] in COLOURS and match["c2"] in COLOURS and match["s1"] in SHAPES and match["s2"] in SHAPES:
            return Combination(match["c1"], match["s1"], match["c2"], match["s2"])
    return None


@dataclass(frozen=True)
class Scene:
    """One image: a combination plus the jitter that places and sizes its two objects."""

    combination: Combination
    template: int
    layout: tuple[tuple[float, float, float, float], tuple[float, float, float, float]]  # (cx, cy, radius, angle) x2


def random_scene(combination: Combination, rng: random.Random, template: int | None = None) -> Scene:
    layout = []
    for half in (0, 1):
        radius = rng.uniform(4.5, 6.5)
        cx = (0.25 + 0.5 * half) * IMAGE_SIZE + rng.uniform(-2.0, 2.0)
        cy = IMAGE_SIZE / 2 + rng.uniform(-6.0, 6.0)
        layout.append((cx, cy, radius, rng.uniform(-12.0, 12.0)))
    template = rng.randrange(len(TEMPLATES)) if template is None else template
    return Scene(combination, template, (layout[0], layout[1]))


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        corners = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
        points = [(x * r * 0.82, y * r * 0.82) for x, y in corners]
    elif shape == "triangle":
        points = [(r * math.cos(math.radians(a)), r * math.sin(math.radians(a))) for a in (-90, 30, 150)]
        points = [(1.2 * x, 1.2 * y + 0.18 * r) for x, y in points]  # equal visual weight to the others
    elif shape == "cross":
        w = 0.36 * r
        points = [(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w), (-r, -w), (-w, -w)]
    else:
        raise ValueError(shape)
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]


def render(scene: Scene) -> Image.Image:
    """The scene as a 32x32 RGB image."""
    k = SUPERSAMPLE
    image = Image.new("RGB", (IMAGE_SIZE * k, IMAGE_SIZE * k), BACKGROUND)
    draw = ImageDraw.Draw(image)
    combo = scene.combination
    for (colour, shape), (cx, cy, r, angle) in zip(
        ((combo.left_colour, combo.left_shape), (combo.right_colour, combo.right_shape)), scene.layout
    ):
        fill = COLOURS[colour]
        if shape == "circle":
            draw.ellipse([(cx - r) * k, (cy - r) * k, (cx + r) * k, (cy + r) * k], fill=fill)
        else:
            draw.polygon([(x * k, y * k) for x, y in _polygon(shape, cx, cy, r, angle)], fill=fill)
    return image.reduce(k)


def scenes(split: str, count: int, seed: int = 0) -> list[Scene]:
    """``count`` scenes of a split: train draws from seen combinations only; validation and test
    draw uniformly from all 576 (their images are real-world references, never training data)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; one of {SPLITS}")
    rng = random.Random(f"shapes-world/{split}/{seed}")
    pool = seen_combinations() if split == "train" else all_combinations()
    return [random_scene(rng.choice(pool), rng) for _ in range(count)]


def evaluation_prompts(count: int = 256, seed: int = 0) -> list[dict]:
    """Held-out evaluation prompts: half from seen combinations, half from unseen ones, templates
    in rotation. Each entry: {"index", "prompt", "split": "seen"|"unseen"}."""
    rng = random.Random(f"shapes-world/eval-prompts/{seed}")
    unseen = sorted(unseen_combinations(), key=Combination.attributes)
    seen = seen_combinations()
    picks = []
    for i in range(count):
        group, name = (seen, "seen") if i % 2 == 0 else (unseen, "unseen")
        picks.append({"index": i, "prompt": rng.choice(group).caption(i % len(TEMPLATES)), "split": name})
    return picks


def write_prompt_file(path: str | Path, count: int = 256, seed: int = 0) -> Path:
    """The evaluation prompts as a .jsonl file that sample.py --prompts reads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(e) + "\n" for e in evaluation_prompts(count, seed)), encoding="utf-8")
    return path


def write_imagefolder(folder: str | Path, count: int, split: str = "train", seed: int = 0) -> Path:
    """Render a split into the imagefolder layout every training entry point reads (``metadata.jsonl``
    lines {"file_name", "text": [all three template captions]}: a random caption per image, like COCO)."""
    folder = Path(folder)
    if (folder / "metadata.jsonl").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, scene in enumerate(tqdm(scenes(split, count, seed), desc=f"rendering shapes world ({split})", leave=False)):
        name = f"{i:06d}.png"
        render(scene).save(folder / name)
        captions = [scene.combination.caption(t) for t in range(len(TEMPLATES))]
        lines.append(json.dumps({"file_name": name, "text": captions}))
    tmp = folder / ".metadata.jsonl.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(folder / "metadata.jsonl")  # the metadata file appears last: a killed run is redone
    return folder
