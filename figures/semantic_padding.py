#!/usr/bin/env python
"""Paper Fig. 7 / 4.3, semantic vs padding embedding: `python figures/semantic_padding.py --help`. Library: figures/embeddings.py."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from dice.errors import exit_on_user_error  # noqa: E402
from figures.embeddings import semantic_padding_cli  # noqa: E402

if __name__ == "__main__":
    with exit_on_user_error():
        semantic_padding_cli()
