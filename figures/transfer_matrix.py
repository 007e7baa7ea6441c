#!/usr/bin/env python
"""Paper Fig. 6, cross-model transfer (sharpeners x base models): `python figures/transfer_matrix.py --help`. Library: figures/transfer.py."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from dice.errors import exit_on_user_error  # noqa: E402
from figures.transfer import cli  # noqa: E402

if __name__ == "__main__":
    with exit_on_user_error():
        cli()
