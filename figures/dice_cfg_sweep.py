#!/usr/bin/env python
"""Paper Fig. 17, DICE combined with CFG: `python figures/dice_cfg_sweep.py --help`. Library: figures/sweeps.py."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from dice.errors import exit_on_user_error  # noqa: E402
from figures.sweeps import dice_cfg_cli  # noqa: E402

if __name__ == "__main__":
    with exit_on_user_error():
        dice_cfg_cli()
