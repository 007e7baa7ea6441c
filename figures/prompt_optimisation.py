#!/usr/bin/env python
"""Paper Fig. 3, one prompt's embedding optimised against CFG: `python figures/prompt_optimisation.py --help`. Library: figures/optimise.py."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from dice.errors import exit_on_user_error  # noqa: E402
from figures.optimise import cli  # noqa: E402

if __name__ == "__main__":
    with exit_on_user_error():
        cli()
