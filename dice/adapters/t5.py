"""What a family with a T5 text encoder (PixArt's, SD3's third) does with it: T5 keeps its own dtype."""
from __future__ import annotations

from typing import ClassVar


class KeepsT5Dtype:
    """Mixin for an adapter: T5 keeps the dtype ``from_pretrained`` gave it rather than the mixed-precision cast of the
    other frozen modules (transformers holds T5's feed-forward output layers in fp32 under fp16, where they overflow
    otherwise, and a blanket cast would undo that); it is moved and frozen all the same."""

    t5_component: ClassVar[str]  # the pipeline component that is T5

    def frozen_modules(self):
        return {name: m for name, m in super().frozen_modules().items() if name != self.t5_component}

    def freeze(self, device, dtype):
        super().freeze(device, dtype)  # pipe.to(device) moves T5 too, without a cast
        t5 = getattr(self.pipe, self.t5_component, None)
        if t5 is not None:
            t5.requires_grad_(False).eval()
        return self
