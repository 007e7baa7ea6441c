"""Text embeddings computed once and read back from safetensors shards, so a huge frozen text encoder
(PixArt-alpha's 4.8B-parameter T5-XXL) need not stay on the GPU while the sharpener trains.

A cache folder holds ``index.json`` (prompt hash -> shard file, plus a fingerprint of the encoder)
and ``shard-*.safetensors`` files with, per prompt, ``<hash>/embeds`` [L, D], ``<hash>/mask`` [T] and
``<hash>/pooled`` [P] (the fields of :class:`Conditioning` a family uses). ``L`` may be shorter than
the full ``T`` tokens when the family says the padding cannot influence the result (PixArt's prompt
mask); such rows are padded back with zeros on lookup and refused where padding matters.
Building is sharded over processes and incremental: prompts already stored are not encoded again.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..cache_check import refuse_other_writer
from ..errors import UserError, give_default_permissions
from .base import Conditioning

logger = logging.getLogger("dice")

INDEX_NAME = "index.json"
FORMAT_VERSION = 1
PROBE_PROMPT = "a photo of a cat sitting on a chair"
_FIELDS = ("embeds", "mask", "pooled")


class TextCacheError(UserError, RuntimeError):
    """The cache folder does not match the model, or lacks a prompt; the message says what to do."""


def prompt_key(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:40]


def _barrier(accelerator) -> None:
    if accelerator is not None:
        accelerator.wait_for_everyone()


class TextEmbeddingCache:
    def __init__(self, folder: str | os.PathLike, num_tokens: int):
        self.folder = Path(folder)
        self.num_tokens = num_tokens
        index = json.loads((self.folder / INDEX_NAME).read_text())
        self.entries: dict[str, list] = index["entries"]  # key -> [shard file, stored token count]
        self._open: dict[str, object] = {}

    # ---- building --------------------------------------------------------------------------
    @classmethod
    def build(
        cls, folder: str | os.PathLike, *, prompts: list[str], full_prompts: list[str],
        encode: Callable[[list[str]], Conditioning], stored_tokens: Callable[[Conditioning], list[int]],
        num_tokens: int, fingerprint: dict, accelerator=None, batch_size: int = 64, shard_size: int = 4096,
    ) -> "TextEmbeddingCache":
        """Encode every prompt not yet stored; ``full_prompts`` (negatives) keep all their tokens.

        ``stored_tokens(cond)`` says how many leading tokens of each row of ``cond`` to keep.
        """
        folder = Path(folder)
        rank = accelerator.process_index if accelerator is not None else 0
        world = accelerator.num_processes if accelerator is not None else 1
        is_main = rank == 0
        if is_main:
            folder.mkdir(parents=True, exist_ok=True)
        _barrier(accelerator)
        index_path = folder / INDEX_NAME
        index = json.loads(index_path.read_text()) if index_path.is_file() else None
        probe = encode([PROBE_PROMPT]).embeds[0].float().cpu()
        if index is not None:
            refuse_other_writer(folder, index, fingerprint, probe, error=TextCacheError, cache="text embedding cache",
                                option="--text_embedding_cache", writer="text encoder")
        entries = index["entries"] if index else {}
        generation = index["generations"] if index else 0

        full = set(full_prompts)
        wanted = dict.fromkeys([*prompts, *full_prompts])  # ordered, unique
        todo = [p for p in wanted if prompt_key(p) not in entries
                or (p in full and entries[prompt_key(p)][1] < num_tokens)]
        mine = todo[rank::world]
        if is_main and todo:
            logger.info("text embedding cache %s: encoding %d prompt(s) on %d process(es)", folder, len(todo), world)

        part: dict[str, list] = {}
        shard: dict[str, torch.Tensor] = {}
        shard_count = in_shard = 0

        def flush():
            nonlocal shard, shard_count, in_shard
            if shard:
                name = f"shard-{generation:03d}-{rank:03d}-{shard_count:05d}.safetensors"

                save_file(shard, str(folder / name))
                give_default_permissions(folder / name)
                for key in {k.split("/")[0] for k in shard}:
                    part[key][0] = name
                shard, shard_count, in_shard = {}, shard_count + 1, 0

        for start in range(0, len(mine), batch_size):
            chunk = mine[start:start + batch_size]
            cond = encode(chunk)
            lengths = stored_tokens(cond)
            for i, prompt in enumerate(chunk):
                key = prompt_key(prompt)
                length = num_tokens if prompt in full else int(lengths[i])
                shard[f"{key}/embeds"] = cond.embeds[i, :length].detach().cpu().contiguous()
                if cond.mask is not None:
                    shard[f"{key}/mask"] = cond.mask[i].detach().cpu().contiguous()
                if cond.pooled is not None:
                    shard[f"{key}/pooled"] = cond.pooled[i].detach().cpu().contiguous()
                part[key] = [None, length]
                in_shard += 1
            if in_shard >= shard_size:
                flush()
        flush()
        (folder / f".part-{generation:03d}-{rank:03d}.json").write_text(json.dumps(part))
        _barrier(accelerator)

        if is_main:
            for r in range(world):
                part_path = folder / f".part-{generation:03d}-{r:03d}.json"
                entries.update(json.loads(part_path.read_text()))
                part_path.unlink()
            new_index = {"format_version": FORMAT_VERSION, "fingerprint": fingerprint, "generations": generation + 1,
                         "probe": probe.tolist(), "entries": entries}
            tmp = folder / f".{INDEX_NAME}.tmp"
            tmp.write_text(json.dumps(new_index))
            os.replace(tmp, index_path)  # readers never see a half-written index
        _barrier(accelerator)
        return cls(folder, num_tokens)

    # ---- reading ---------------------------------------------------------------------------
    def __contains__(self, prompt: str) -> bool:
        return prompt_key(prompt) in self.entries

    def _shard(self, name: str):
        if name not in self._open:
            handle = safe_open(str(self.folder / name), framework="pt")  # memory-mapped
            self._open[name] = (handle, set(handle.keys()))
        return self._open[name]

    def lookup(self, prompts: list[str], need_padding: bool) -> Conditioning:
        """Stacked embeddings of ``prompts``; ``need_padding``: refuse rows stored without padding tokens."""
        rows = {name: [] for name in _FIELDS}
        for prompt in prompts:
            key = prompt_key(prompt)
            if key not in self.entries:
                raise TextCacheError(
                    f"prompt {prompt!r} is not in the text embedding cache '{self.folder}' and the text encoder "
                    "was unloaded after building it; add the prompt to the training captions, negatives or "
                    "validation prompts so that it is cached."
                )
            shard_name, length = self.entries[key]
            if need_padding and length < self.num_tokens:
                raise TextCacheError(
                    f"prompt {prompt!r} was cached without its padding tokens, but this use needs them "
                    "(a cache built with the prompt mask, reused with the full mask?); use another cache folder."
                )
            shard, keys = self._shard(shard_name)
            embeds = shard.get_tensor(f"{key}/embeds")
            if length < self.num_tokens:
                embeds = torch.cat([embeds, embeds.new_zeros(self.num_tokens - length, embeds.shape[-1])])
            rows["embeds"].append(embeds)
            for name in ("mask", "pooled"):
                if f"{key}/{name}" in keys:
                    rows[name].append(shard.get_tensor(f"{key}/{name}"))
        return Conditioning(**{name: torch.stack(rows[name]) if rows[name] else None for name in _FIELDS})
