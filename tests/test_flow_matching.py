"""Flow matching through the family axis (dice/adapters/flow_matching.py), checked against the scheduler's own math;
and the epsilon families' draws unchanged by the adapter hooks (their losses stay bit-identical)."""
from __future__ import annotations

import copy

import pytest
import torch

from dice.adapters import adapter_class
from dice.distillation import cfg_teacher, distillation_loss, distillation_step
from dice.errors import UserError
from dice.methods.dice import DiceMethod, sharpen
from dice.sampling import generate, make_scheduler, use_scheduler
from dice.sharpener import Sharpener

PROMPTS = ["a red ball on a green field", "a photo of a cat"]


@pytest.fixture(scope="module")
def sd3(tiny_model):
    return adapter_class("sd3").from_pretrained(str(tiny_model("sd3")))


def test_noising_is_the_schedulers_scale_noise(sd3):
    """x_t at every timestep the sampler visits equals FlowMatchEulerDiscreteScheduler.scale_noise there."""
    scheduler = copy.deepcopy(sd3.noise_scheduler)
    scheduler.set_timesteps(20)
    gen = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(3, 4, 8, 8, generator=gen), torch.randn(3, 4, 8, 8, generator=gen)
    for t in scheduler.timesteps:
        expected = scheduler.scale_noise(latents, t.expand(3), noise)
        torch.testing.assert_close(sd3.add_noise(latents, noise, t.expand(3)), expected, rtol=0, atol=1e-6)
    # The clean end and the pure-noise end.
    assert torch.equal(sd3.add_noise(latents, noise, torch.zeros(3)), latents)
    assert torch.equal(sd3.add_noise(latents, noise, torch.full((3,), 1000.0)), noise)


def test_velocity_target_is_what_the_euler_step_integrates(sd3):
    """The network's target eps - x_0 is the velocity: one scheduler step with it from x_t at sigma lands exactly on
    the noising at the next sigma. CFG combines velocities as noise predictions (linear)."""
    scheduler = copy.deepcopy(sd3.noise_scheduler)
    scheduler.set_timesteps(8)
    gen = torch.Generator().manual_seed(1)
    x_0, eps = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)
    x_t = sd3.add_noise(x_0, eps, scheduler.timesteps[0].expand(2))
    for t, t_next in zip(scheduler.timesteps[:-1], scheduler.timesteps[1:]):
        x_t = scheduler.step(eps - x_0, t, x_t).prev_sample
        torch.testing.assert_close(x_t, sd3.add_noise(x_0, eps, t_next.expand(2)), rtol=0, atol=1e-5)
    assert sd3.prediction_type == "flow" and adapter_class("sd15").prediction_type == "epsilon"


def test_shift_is_the_schedulers(sd3):
    scheduler = sd3.noise_scheduler
    assert sd3.shift == 3.0
    unshifted = torch.linspace(1, 1000, 1000).flip(0) / 1000  # the scheduler's own sigmas before its shift
    torch.testing.assert_close(sd3.shifted(unshifted), scheduler.sigmas, rtol=0, atol=1e-6)


@pytest.mark.parametrize("draw", ["logit_normal", "uniform"])
def test_training_sigmas(tiny_model, draw):
    """sigma = shift(u) with u logit-normal (SD3's training) or uniform (the Euler sampler's steps): its quantiles are
    the shifted quantiles of u; draws are continuous timesteps 1000 sigma, reproducible from the generator."""
    adapter = adapter_class("sd3").from_pretrained(str(tiny_model("sd3")), flow_sigmas=draw)
    t = adapter.draw_timesteps(20000, torch.Generator().manual_seed(0))
    assert t.dtype == torch.float32 and 0 < t.min() and t.max() < 1000 and len(t.unique()) > 19000
    assert torch.equal(t, adapter.draw_timesteps(20000, torch.Generator().manual_seed(0)))
    q = torch.tensor([0.1, 0.5, 0.9])
    u = torch.sigmoid(torch.distributions.Normal(0, 1).icdf(q)) if draw == "logit_normal" else q
    torch.testing.assert_close(torch.quantile(t / 1000, q), adapter.shifted(u), rtol=0, atol=0.01)


def test_epsilon_families_draw_as_before(tiny_model, tiny_dataset):
    """SD1.5 / SDXL / PixArt-alpha: the step draws the same numbers from the same generators as before the hooks
    (timesteps, then noise, then u and w), so losses and trained weights stay bit-identical."""
    from dice.negatives import NegativePrompts
    from dice.training import NegativeBank

    adapter = adapter_class("sd15").from_pretrained(str(tiny_model("sd15")))
    assert torch.equal(adapter.draw_timesteps(5, torch.Generator().manual_seed(3)),
                       torch.randint(0, 1000, (5,), generator=torch.Generator().manual_seed(3)))
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    torch.manual_seed(0)
    sharpener, method = Sharpener(adapter.text_dim), DiceMethod()
    bank = NegativeBank(adapter, NegativePrompts())
    loss = distillation_step(adapter, method, sharpener, latents, PROMPTS, None, bank, torch.Generator().manual_seed(5))
    # The paper's formula with the draws written out as the step made them before the family hooks existed.
    gen = torch.Generator().manual_seed(5)
    t = torch.randint(0, adapter.num_train_timesteps, (2,), generator=gen)
    x_t = adapter.noise_scheduler.add_noise(latents, torch.randn(latents.shape, generator=gen), t)
    cond, uncond = adapter.encode_prompts(PROMPTS), bank.sample(2, gen)
    teacher = cfg_teacher(adapter, x_t, t, cond, uncond, 5.0)
    student = adapter.predict_noise(x_t, t, sharpen(adapter, sharpener, cond, uncond))
    assert torch.equal(loss, distillation_loss(student, teacher))


def test_samplers_of_a_flow_model(sd3):
    """The default is the model's own FlowMatch Euler at its shift; DPM-Solver++ (the paper's) is built with flow
    sigmas at the model's shift and the velocity as its prediction, and converges to the same image as Euler;
    epsilon-only samplers are refused in one line."""
    use_scheduler(sd3)
    assert type(sd3.pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler" and sd3.pipe.scheduler.config.shift == 3.0
    dpm = make_scheduler("dpmsolver++", sd3)
    assert (dpm.config.prediction_type, dpm.config.use_flow_sigmas, dpm.config.flow_shift) == ("flow_prediction", True, 3.0)
    assert dpm.config.algorithm_type == "dpmsolver++" and dpm.config.solver_order == 2
    for name in ("ddim", "euler", "pndm", "DDPMScheduler"):
        with pytest.raises(UserError, match="flow-matching"):
            make_scheduler(name, sd3)
    make_scheduler("UniPCMultistepScheduler", sd3)  # has flow sigmas

    common = dict(resolution=32, output_type="latent", cfg_scale=3.0)
    seeds = [0, 1]
    reference = generate(sd3, PROMPTS, seeds, steps=200, **common)
    euler = generate(sd3, PROMPTS, seeds, steps=10, **common)
    use_scheduler(sd3, "dpmsolver++")
    solver = generate(sd3, PROMPTS, seeds, steps=10, **common)
    converged = generate(sd3, PROMPTS, seeds, steps=200, **common)
    use_scheduler(sd3)
    scale = reference.abs().mean()
    assert (converged - reference).abs().mean() < 0.02 * scale  # both solve the same flow ODE
    assert (solver - reference).abs().mean() < (euler - reference).abs().mean()  # second order: closer at 10 steps


def test_student_and_teacher_compare_velocities(sd3):
    """The loss of a flow family: the student's and the CFG teacher's velocities at x_t = (1 - sigma) x_0 + sigma eps."""
    gen = torch.Generator().manual_seed(2)
    t = sd3.draw_timesteps(2, gen)
    x_t = sd3.add_noise(torch.randn(2, 4, 16, 16, generator=gen), torch.randn(2, 4, 16, 16, generator=gen), t)
    cond, uncond = sd3.encode_prompts(PROMPTS), sd3.encode_negative(["", ""])
    v_u, v_c = sd3.predict_noise(x_t, t, uncond), sd3.predict_noise(x_t, t, cond)
    teacher = cfg_teacher(sd3, x_t, t, cond, uncond, 4.5)
    torch.testing.assert_close(teacher, v_u + 4.5 * (v_c - v_u), rtol=1e-4, atol=1e-5)
