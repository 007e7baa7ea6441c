"""The README's Python blocks that run offline on a CPU run as written."""
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def readme_block(containing: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    matches = [b for b in blocks if containing in b]
    assert len(matches) == 1, f"expected one README python block with {containing!r}, found {len(matches)}"
    return matches[0]


def test_the_offline_sharpener_example_runs_as_written(tmp_path):
    """dice.apply on the shipped shapes-world pipeline with the shipped sharpener, saving an image."""
    from PIL import Image

    code = readme_block("dice.apply(pipe, DEFAULT_SHARPENER)")
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = re.search(r'\.save\("([^"]+)"\)', code).group(1)
    image = Image.open(tmp_path / saved)
    assert image.size == (128, 128) and len(set(image.getdata())) > 10  # an image, not a blank
