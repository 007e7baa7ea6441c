#!/usr/bin/env python
"""The embedding-only ceiling on the shapes world (free per-prompt residuals): `python figures/embedding_ceiling.py --help`.
Library: dice/shapes_world/ceiling.py."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from dice.errors import exit_on_user_error  # noqa: E402
from dice.shapes_world.ceiling import cli  # noqa: E402

if __name__ == "__main__":
    with exit_on_user_error():
        cli()
