"""Small captioned image folders for tests and the plumbing demos (the imagefolder layout every entry point reads)."""
from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw


def write_synthetic_dataset(folder: str | Path, num_images: int = 64, size: int = 48, seed: int = 0) -> Path:
    """A small captioned image set in the imagefolder layout: coloured shapes with matching captions."""
    colors = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (235, 210, 40),
              "white": (245, 245, 245), "black": (15, 15, 15), "orange": (240, 140, 30), "purple": (140, 50, 170)}
    shapes = ["ball", "cup", "house", "tree", "car", "flower"]
    rng = random.Random(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(num_images):
        fg, bg = rng.sample(list(colors), 2)
        shape, size_word = rng.choice(shapes), rng.choice(["small", "large"])
        img = Image.new("RGB", (size, size), colors[bg])
        draw = ImageDraw.Draw(img)
        r = size // 5 if size_word == "small" else size // 3
        c = size // 2 + rng.randint(-size // 8, size // 8)
        (draw.ellipse if shape in ("ball", "flower") else draw.rectangle)([c - r, c - r, c + r, c + r], fill=colors[fg])
        name = f"{i:05d}.png"
        img.save(folder / name)
        lines.append(json.dumps({"file_name": name, "text": [
            f"a {size_word} {fg} {shape} on a {bg} field", f"a photo of a {fg} {shape}"]}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder
