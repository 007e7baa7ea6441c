#!/usr/bin/env python
"""Paper A.1, the sharpener's structure (width, heads): `python figures/sharpener_structure.py --help`. Library: figures/sweeps.py."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from dice.errors import exit_on_user_error  # noqa: E402
from figures.sweeps import structure_cli  # noqa: E402

if __name__ == "__main__":
    with exit_on_user_error():
        structure_cli()
