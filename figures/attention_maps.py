#!/usr/bin/env python
"""Paper Fig. 9 / 20, cross-attention maps: `python figures/attention_maps.py --help`. Library: figures/attention.py."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from dice.errors import exit_on_user_error  # noqa: E402
from figures.attention import cli  # noqa: E402

if __name__ == "__main__":
    with exit_on_user_error():
        cli()
