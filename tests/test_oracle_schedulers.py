"""Oracle tests: a denoiser that knows the answer must be followed exactly, by every scheduler family.

The UNet is replaced by a stand-in that, for the scaled model input x at noise level abar, returns the exact
noise towards a known clean latent z*: eps = (x - sqrt(abar) z*) / sqrt(1 - abar). A sampler fed that
prediction lands on z*; so inside the mask the edit's final latent must be z*, and outside it the source
latent z0, with and without skipping part of the schedule, for SD and SDXL. The stand-in reads the noise level the
scheduler is at (its sigma, or alphas_cumprod at the timestep), as a perfect model would know it.
"""

import math

import pytest
import torch
from conftest import gen, make_image, make_mask
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)

from bld.ops.blending import latent_mask

SCHEDULERS = {
    "pndm": (PNDMScheduler, {"skip_prk_steps": True}),
    "ddim": (DDIMScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler-a": (EulerAncestralDiscreteScheduler, {}),
    "dpm++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
    "unipc": (UniPCMultistepScheduler, {}),
    "lms": (LMSDiscreteScheduler, {}),
    "heun": (HeunDiscreteScheduler, {}),
}


def noise_level(scheduler, t) -> float:
    """abar of the sample the scheduler hands the model now."""
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None and hasattr(scheduler, "step_index") and not isinstance(scheduler, (
            DPMSolverMultistepScheduler, UniPCMultistepScheduler)):
        index = scheduler.step_index if scheduler.step_index is not None else (scheduler.begin_index or 0)
        sigma = float(sigmas[index])
        return 1.0 / (1.0 + sigma ** 2)
    return float(scheduler.alphas_cumprod[int(t)])


def oracle(pipe, target):
    def forward(sample, timestep, *args, return_dict=True, **kwargs):
        abar = noise_level(pipe.scheduler, timestep)
        eps = (sample - math.sqrt(abar) * target.to(sample.dtype)) / math.sqrt(1 - abar)
        return (eps,)
    return forward


def final_noise(scheduler) -> float:
    """sqrt(1 - abar) of where the schedule ends: 0, or DDIM / PNDM's final alpha when it is not one."""
    final = getattr(scheduler, "final_alpha_cumprod", None)
    return 0.0 if final is None else math.sqrt(1 - float(final))


CASES = [(name, skip, True) for name in SCHEDULERS for skip in (0.0, 0.5)] + [
    (name, skip, False) for name in ("ddim", "pndm") for skip in (0.0, 0.5)]  # SD's own final alpha (< 1)


@pytest.mark.parametrize("name, skip_fraction, final_alpha_one", CASES)
def test_a_perfect_denoiser_lands_on_its_latent_inside_the_mask(pipe, monkeypatch, name, skip_fraction,
                                                                 final_alpha_one):
    cls, extra = SCHEDULERS[name]
    image, mask = make_image(), make_mask()
    original = pipe.scheduler
    pipe.scheduler = cls.from_config(original.config, **extra, set_alpha_to_one=final_alpha_one)
    prepared = pipe.prepare_image_and_mask(image, mask, None, None, False)
    z0 = pipe.encode_source(prepared.image)
    target = torch.randn(z0.shape, generator=torch.Generator().manual_seed(7)) * 0.8
    monkeypatch.setattr(pipe.unet, "forward", oracle(pipe, target))
    try:
        latents = pipe("a red star", image, mask, num_inference_steps=10, skip_fraction=skip_fraction,
                       guidance_scale=1.0, num_images_per_prompt=2, generator=gen(3), output_type="latent").images
        tolerance = 1e-3 + 5 * final_noise(pipe.scheduler)
    finally:
        pipe.scheduler = original
    m = latent_mask(prepared.mask, tuple(z0.shape[-2:]), "any").expand_as(latents).bool()
    error = (latents - target.expand_as(latents))[m].abs().max().item()
    assert error < tolerance, f"{name}: max |z - z*| inside the mask {error:.4g} (tolerance {tolerance:.3g})"
    assert torch.equal(latents[~m], z0.expand_as(latents)[~m])


def test_pndm_with_runge_kutta_warm_up_cannot_start_part_way(sd_pipe):
    original = sd_pipe.scheduler
    sd_pipe.scheduler = PNDMScheduler.from_config(original.config, skip_prk_steps=False)
    try:
        with pytest.raises(ValueError, match="skip_prk_steps=False.*cannot start part-way"):
            sd_pipe("a red star", make_image(), make_mask(), num_inference_steps=10, skip_fraction=0.5,
                    guidance_scale=1.0, num_images_per_prompt=1, generator=gen(3), output_type="latent")
    finally:
        sd_pipe.scheduler = original
