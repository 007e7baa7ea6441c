"""The authors' DICE training step, rebuilt for timing: their operations and precision, not their code.

What their train_sd15_dice.py / train_sdxl_dice.py do at every step (zju-pi/dice 3711c2f; the list
is in /work/notes and in benchmarks/README.md), and what this class does on the same frozen model:

1. ``next()`` on a DataLoader without workers: JPEG decoding, centre crop and resize in the main
   process, then tokenisation and the copy to the GPU;
2. one timestep for the whole batch, made on the GPU from a Python integer;
3. ``vae.encode(pixels).latent_dist.sample() * scaling_factor``, no gradients;
4. ``torch.randn_like`` noise and the scheduler's ``add_noise``;
5. the text encoder(s) on the captions (``uc``, the empty prompt, was encoded once before the loop);
6. the CFG teacher: one denoiser call on ``[x_t, x_t]`` with ``[uc, c]``, under their ``torch.autocast("cuda")``
   (fp16) over bf16 weights, no gradients (here fp16 autocast on the accelerator's device in a mixed-precision run);
7. ``c + sharpener(c, uc)`` with the first token restored (SD1.5/SDXL), the sharpener in fp32
   under accelerate's autocast;
8. the student call under fp16 autocast; L1 (SD1.5) or squared (SDXL) error summed over the
   sample's elements and divided by the global batch;
9. ``accelerator.gather(loss.repeat(B)).mean().item()``, ``backward``, ``optimizer.step()``,
   ``lr_scheduler.step()``, ``zero_grad()``, then ``avg_loss.item()`` (the per-step log line, rank 0)
   and ``loss.item()`` (the progress bar): three host synchronisations per step.

Their frozen models run under xformers; here both steps use the same attention (PyTorch SDPA), so
the comparison measures everything but the attention kernel.
"""
from __future__ import annotations

import random

import torch

from dice.adapters.base import Conditioning
from dice.data import make_loader
from dice.methods.dice import keeps_first_token

LOSS_BY_FAMILY = {"sd15": "l1", "sdxl": "mse"}  # their SD1.5 and SDXL scripts


class AuthorsStep:
    def __init__(self, adapter, accelerator, sharpener, optimizer, lr_scheduler, records, resolution: int,
                 batch_size: int, seed: int = 0):
        if adapter.family not in LOSS_BY_FAMILY:
            raise ValueError(f"the authors released no {adapter.family} training script")
        self.adapter, self.accelerator = adapter, accelerator
        self.sharpener, self.optimizer, self.lr_scheduler = sharpener, optimizer, lr_scheduler
        self.loss_type = LOSS_BY_FAMILY[adapter.family]
        self.batch_size, self.resolution = batch_size, resolution
        self.total_batch = batch_size * accelerator.num_processes
        self.loader = iter(make_loader(records, resolution, batch_size, accelerator.process_index,
                                       accelerator.num_processes, seed, num_workers=0))
        self.uc = adapter.encode_negative([""] * batch_size)
        self.rng = random.Random(42)  # their RandomGenerator: the same t on every rank
        # Their torch.autocast('cuda') is fp16 whatever accelerate's setting; here it follows the accelerator's
        # device, and a full-precision run (mixed_precision "no", CPU) stays full precision for both steps.
        device_type = accelerator.device.type
        self.autocast = torch.autocast(device_type, dtype=torch.float16,
                                       enabled=accelerator.mixed_precision != "no" and device_type != "cpu")

    def __call__(self) -> float:
        adapter, device = self.adapter, self.accelerator.device
        batch = next(self.loader)
        pixels = batch["pixels"].to(device)
        sizes = batch["sizes"].to(device)
        t = torch.tensor(self.rng.randint(0, adapter.num_train_timesteps - 1), device=device).repeat(self.batch_size)
        with self.accelerator.accumulate(self.sharpener):
            with torch.no_grad():
                vae = adapter.pipe.vae
                latents = vae.encode(pixels.to(vae.dtype)).latent_dist.sample() * vae.config.scaling_factor
                noise = torch.randn_like(latents)
                x_t = adapter.add_noise(latents, noise, t)
                c = adapter.encode_prompts(batch["captions"])
                with self.autocast:
                    both = adapter.predict_noise(torch.cat([x_t, x_t]), torch.cat([t, t]),
                                                 Conditioning.cat([self.uc, c]), torch.cat([sizes, sizes]))
                    eps_uncond, eps_cond = both.chunk(2)
                    target = eps_uncond + 5.0 * (eps_cond - eps_uncond)
            learned = c.embeds + self.sharpener(c.embeds, self.uc.embeds)
            if keeps_first_token(adapter):
                learned[:, 0] = c.embeds[:, 0]
            with self.autocast:
                prediction = adapter.predict_noise(x_t, t, c.replace(embeds=learned), sizes)
                error = prediction - target
                error = error.abs() if self.loss_type == "l1" else error.square()
                loss = error.sum() * (1 / self.total_batch)
                avg_loss = self.accelerator.gather(loss.repeat(self.batch_size)).mean()
                train_loss = avg_loss.item()
                self.accelerator.backward(loss)
                self.optimizer.step()
                self.lr_scheduler.step()
            self.optimizer.zero_grad()
        avg_loss.item()  # their per-step logger.info line
        loss.detach().item()  # their progress-bar postfix
        return train_loss
