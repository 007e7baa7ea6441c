"""Negative prompts (paper 3.2): the distribution u is drawn from in training, and the same at sampling.

In training, each sample's u is, with probability ``probability``, one of ``prompts`` chosen at
random, else the empty prompt. The checkpoint records both, and sampling draws each image's u from
that same distribution (keyed by the image's seed, so it does not depend on batching or processes):
a sharpener trained only on negative prompts never meets the empty prompt it has not learned, and
one trained on the empty prompt gets the empty prompt. README "Negative prompts" gives the evidence.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError

DEFAULT_NEGATIVE_PROMPTS = Path(__file__).parent / "assets" / "negative_prompts.txt"


def read_negative_prompts(path: str | None) -> list[str]:
    """The lines of a negative-prompt file ('default': the list shipped with dice); None: none."""
    if path is None:
        return []
    if path == "default":
        path = str(DEFAULT_NEGATIVE_PROMPTS)
    if not os.path.isfile(path):
        raise UserError(f"--negative_prompts '{path}' does not exist. Give a text file with one negative prompt per line, or 'default'")
    prompts = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise UserError(f"--negative_prompts '{path}' has no prompts. Put one negative prompt per line in it, or pass 'default'")
    return prompts


@dataclass
class NegativePrompts:
    """u: with probability ``probability`` a random one of ``prompts``, else the empty prompt."""

    prompts: list[str] = field(default_factory=list)
    probability: float = 0.0

    @property
    def only_empty(self) -> bool:
        return not self.prompts or self.probability == 0

    def for_image(self, seed: int) -> str:
        """Image ``seed``'s u, a draw from the training distribution."""
        if self.only_empty:
            return ""
        rng = random.Random(f"negative-prompt-{seed}")
        return rng.choice(self.prompts) if rng.random() < self.probability else ""

    def describe(self) -> str:
        if self.only_empty:
            return "the empty prompt"
        share = "" if self.probability == 1 else f" with probability {self.probability:g}, else the empty prompt"
        return f"one of {len(self.prompts)} negative prompts drawn per image{share}"

    def to_options(self) -> str | dict:
        """What sampling_options.json records as its negative_prompt."""
        return "" if self.only_empty else {"drawn_from": list(self.prompts), "probability": self.probability}
