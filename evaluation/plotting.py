"""What every plot and figure file here shares: matplotlib without a display, small PNGs, JSON beside them."""
from __future__ import annotations

import json
from pathlib import Path


def pyplot():
    """matplotlib's pyplot on the file-only backend (no display on servers and in tests). Imported when a plot is
    drawn: matplotlib is needed for figures only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, png: Path, title: str | None = None) -> Path:
    """Lay out, write (small: 90 dpi) and close a matplotlib figure."""
    plt = pyplot()
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return png


def write_json(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def write_figure(out: Path, name: str, data: dict, plot) -> dict:
    """Write <out>/<name>.json and <out>/<name>.png (``plot(png_path)``); print where."""
    out.mkdir(parents=True, exist_ok=True)
    png = plot(out / f"{name}.png")
    data = {**data, "png": str(png)}
    write_json(out / f"{name}.json", data)
    print(f"Wrote {out / f'{name}.json'} and {png}", flush=True)
    return data
