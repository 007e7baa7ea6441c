"""The latent cache (--latent_cache): training on stored latents repeats training on live VAE
encoding (to float32 rounding); shards resume; a folder of another VAE or resolution is refused."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from dice import latent_cache
from dice.adapters import adapter_class
from dice.data import CaptionedImages, load_records
from dice.testkit.data import write_synthetic_dataset
from dice.latent_cache import LatentCacheError, build_latent_cache


@pytest.fixture
def dataset(tmp_path):
    root = write_synthetic_dataset(tmp_path / "data", num_images=10, size=40)
    (root / "00003.png").write_bytes(b"not an image")  # skipped live and cached alike
    return root


def test_training_on_cached_latents_matches_live_encoding(tiny_model, dataset, tmp_path, monkeypatch):
    from dice.training import main

    monkeypatch.setattr(latent_cache, "SHARD_SIZE", 4)  # 10 images -> 3 shards
    common = ["--pretrained_model_name_or_path", str(tiny_model("sd15")), "--train_data_dir", str(dataset),
              "--preset", "demo", "--train_batch_size", "3", "--resolution", "32", "--max_train_steps", "4",
              "--checkpointing_steps", "4", "--validation_prompts", "--dataloader_num_workers", "0",
              "--mixed_precision", "no", "--log_every", "2"]
    cache = tmp_path / "latents"
    live = main("sd15", common + ["--output_dir", str(tmp_path / "live")])
    cached = main("sd15", common + ["--output_dir", str(tmp_path / "cached"), "--latent_cache", str(cache)])
    with pytest.raises(LatentCacheError, match="different settings.*resolution"):  # refused before any run folder
        main("sd15", common + ["--output_dir", str(tmp_path / "refused"), "--latent_cache", str(cache), "--resolution", "16"])
    assert not (tmp_path / "refused").exists()

    assert sorted(p.name for p in cache.glob("latents-*.safetensors")) == [f"latents-0000{k}.safetensors" for k in range(3)]
    shard = load_file(str(cache / "latents-00000.safetensors"))
    assert shard["latents"].shape == (4, 4, 16, 16) and shard["readable"].tolist() == [1, 1, 1, 0]
    stats = [[json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()] for run in (live, cached)]
    # The same losses step by step, up to float32 rounding: a convolution's result for one image differs in
    # the last bits with the other images of its batch (live: the training batch; cache: the shard's batch).
    live_losses, cached_losses = ([s["loss"] for s in run] for run in stats)
    assert len(live_losses) == 4 and cached_losses == pytest.approx(live_losses, rel=1e-5, abs=0)
    weights = [load_file(str(run / "checkpoint-4" / "sharpener.safetensors")) for run in (live, cached)]
    for name in weights[0]:
        torch.testing.assert_close(weights[0][name], weights[1][name], rtol=1e-4, atol=1e-6)

    # Resumable: only a missing shard is encoded again; its content is the same.
    (cache / "latents-00001.safetensors").unlink()
    adapter = adapter_class("sd15").from_pretrained(str(tiny_model("sd15")))
    _, records = load_records(dataset)
    encoded = []
    encode = adapter.encode_images
    monkeypatch.setattr(adapter, "encode_images", lambda pixels: encoded.append(len(pixels)) or encode(pixels))
    store = build_latent_cache(cache, records, dataset, adapter, 32, batch_size=3)
    assert encoded == [1, 3, 1]  # the probe image, then the 4 images of shard 1
    latents, sizes = store.get(5)
    pixels, original = CaptionedImages(records, 32).load_pixels(5)
    torch.testing.assert_close(latents, encode(pixels[None])[0])
    assert sizes.tolist() == list(original)
    with pytest.raises(OSError, match="unreadable"):
        store.get(3)

    # Refused: another resolution, another VAE (same config, other weights).
    with pytest.raises(LatentCacheError, match="different settings.*resolution"):
        build_latent_cache(cache, records, dataset, adapter, 16)
    torch.nn.init.normal_(adapter.pipe.vae.encoder.conv_in.weight)
    with pytest.raises(LatentCacheError, match="different VAE"):
        build_latent_cache(cache, records, dataset, adapter, 32)
