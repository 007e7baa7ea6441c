"""The DICE sharpener (paper A.1): two linear layers around one cross-attention block.

``fc1`` (shared by both inputs) -> ReLU -> multi-head cross-attention (query from the prompt
embedding ``c``, key/value from the unconditional/negative embedding ``u``) -> ReLU -> ``fc2``.
The module returns the *residual*; :func:`apply_sharpener` adds it with strength ``alpha``.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

# Paper A.1: cross-attention 512 wide with 8 heads (the results are "insensitive to model structure").
PAPER_INNER_DIM = 512
PAPER_HEADS = 8


class Sharpener(nn.Module, PyTorchModelHubMixin, library_name="dice"):
    """The DICE sharpener ``f(c, u)`` for text embeddings ``dim`` wide (paper A.1).

    A trained one carries ``config`` (a :class:`dice.SharpenerConfig`: family, base model, training
    options) and, from a training run, ``validation_grid`` (the image path). As a huggingface_hub
    ``PyTorchModelHubMixin`` it has ``save_pretrained(folder)``, ``push_to_hub(repo_id)`` and
    ``Sharpener.from_pretrained(repo_id_or_folder, revision=...)`` (see :mod:`dice.hub`).
    """

    def __init__(self, dim: int, inner_dim: int = PAPER_INNER_DIM, num_heads: int = PAPER_HEADS):
        super().__init__()
        if inner_dim % num_heads:
            raise ValueError(f"inner_dim {inner_dim} must be divisible by num_heads {num_heads}")
        self.dim, self.inner_dim, self.num_heads = dim, inner_dim, num_heads
        self.config = None  # SharpenerConfig, set when loaded (or by the caller before save_pretrained)
        self.validation_grid = None  # path of the training run's unguided/CFG/DICE grid, if any
        self.fc1 = nn.Linear(dim, inner_dim)
        self.to_q = nn.Linear(inner_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(inner_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(inner_dim, inner_dim, bias=False)
        self.to_out = nn.Linear(inner_dim, inner_dim)
        self.fc2 = nn.Linear(inner_dim, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        return x.view(batch, tokens, self.num_heads, -1).transpose(1, 2)

    def forward(self, c: torch.Tensor, u: torch.Tensor, u_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Residual for prompt embedding ``c`` [B, T, dim] given context ``u`` [B, T', dim].

        ``u_mask`` [B, T'] (1 = keep) hides padded context tokens (PixArt's T5 mask option).
        """
        hc, hu = F.relu(self.fc1(c)), F.relu(self.fc1(u))
        q, k, v = self._heads(self.to_q(hc)), self._heads(self.to_k(hu)), self._heads(self.to_v(hu))
        attn_mask = None if u_mask is None else u_mask.bool()[:, None, None, :]
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        h = h.transpose(1, 2).reshape(c.shape[0], c.shape[1], self.inner_dim)
        return self.fc2(F.relu(self.to_out(h)))

    # ---- huggingface_hub's PyTorchModelHubMixin hooks -------------------------------------------
    def _save_pretrained(self, save_directory) -> None:
        from .checkpoint import save_pretrained_files

        save_pretrained_files(save_directory, self)

    @classmethod
    def _from_pretrained(cls, *, model_id, revision, cache_dir, force_download, local_files_only, token,
                         map_location: str = "cpu", **_config_values) -> "Sharpener":
        from .checkpoint import load_sharpener
        from .hub import download_sharpener

        folder = model_id if os.path.isdir(model_id) else download_sharpener(
            model_id, revision=revision, cache_dir=cache_dir, force_download=force_download,
            local_files_only=local_files_only, token=token)
        return load_sharpener(folder, device=map_location)[0]

    def push_to_hub(self, repo_id: str, **kwargs):
        """Upload as a Hub repository (see ``PyTorchModelHubMixin.push_to_hub``); the card names ``repo_id``."""
        kwargs["model_card_kwargs"] = {"repo_id": repo_id, **(kwargs.get("model_card_kwargs") or {})}
        return super().push_to_hub(repo_id, **kwargs)

    def generate_model_card(self, *args, repo_id: str | None = None, **kwargs):
        from .hub import model_card

        return model_card(self.config, repo_id=repo_id, has_grid=self.validation_grid is not None,
                          num_parameters=sum(p.numel() for p in self.parameters()))


def apply_sharpener(
    sharpener: nn.Module, c: torch.Tensor, u: torch.Tensor, alpha: float = 1.0,
    u_mask: torch.Tensor | None = None, keep_first_token: bool = True,
) -> torch.Tensor:
    """``c_dice = c + alpha * f(c, u)``; the first token (BOS) is restored unless told otherwise."""
    residual = sharpener(c, u, u_mask) if u_mask is not None else sharpener(c, u)
    sharpened = c + alpha * residual.to(c.dtype)
    if keep_first_token:
        sharpened = torch.cat([c[:, :1], sharpened[:, 1:]], dim=1)
    return sharpened
