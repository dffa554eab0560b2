"""Parity with diffusers' StableDiffusionInpaintPipeline run with a plain 4-channel UNet.

With the same components, scheduler, seed and settings the two must give the same images. Intended
differences, and how this test lines them up:
- diffusers samples the source latent from the VAE posterior with the caller's generator; bld uses the
  posterior mean (deterministic, and it is what "outside the mask the result is the source" refers to).
  The test hands diffusers bld's z0 as a latent image, which diffusers accepts as is.
- diffusers rounds the kept steps as int(steps * strength), the official code skips int(steps * skip);
  they agree when steps * skip_fraction is an integer (here 8 * 0.25), as chosen below.
- bld's default latent mask keeps every cell the mask touches; diffusers samples each cell's first pixel
  (torch's 'nearest'): the test uses latent_mask_mode='top-left' and also checks that 'any' differs on a
  small mask.
"""

import numpy as np
import pytest
from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler, StableDiffusionInpaintPipeline

from conftest import SIZE, gen, make_mask

STEPS, SKIP = 8, 0.25


def run_both(pipe, image, mask, **kwargs):
    ours = pipe("a red star", image, mask, num_inference_steps=STEPS, skip_fraction=SKIP,
                latent_mask_mode="top-left", num_images_per_prompt=2, generator=gen(3), output_type="np",
                reconstruction="none",
                **kwargs).images
    reference = StableDiffusionInpaintPipeline(**pipe.components)
    reference.set_progress_bar_config(disable=True)
    z0 = pipe.encode_source(pipe.prepare_image_and_mask(image, mask, None, None, False).image)
    theirs = reference("a red star", image=z0, mask_image=mask, masked_image_latents=z0, height=SIZE, width=SIZE,
                       strength=1 - SKIP, num_inference_steps=STEPS, num_images_per_prompt=2,
                       generator=gen(3), output_type="np", **kwargs).images
    return ours, theirs


@pytest.mark.parametrize("scheduler_cls", [None, DPMSolverMultistepScheduler, EulerDiscreteScheduler])
def test_matches_diffusers_inpaint_with_a_4_channel_unet(sd_pipe, image, mask, scheduler_cls):
    original = sd_pipe.scheduler
    if scheduler_cls is not None:
        sd_pipe.scheduler = scheduler_cls.from_config(original.config)
    try:
        ours, theirs = run_both(sd_pipe, image, mask, guidance_scale=7.5, negative_prompt="blurry")
    finally:
        sd_pipe.scheduler = original
    assert ours.shape == theirs.shape == (2, SIZE, SIZE, 3)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_default_latent_mask_edits_more_cells_than_diffusers_on_a_small_mask(sd_pipe, image):
    small = make_mask(box=(21, 21, 24, 24))  # 3x3 px: at factor 2 top-left keeps 1 latent cell, 'any' keeps 4
    z0 = sd_pipe.encode_source(sd_pipe.prepare_image_and_mask(image, small, None, None, False).image)

    def edited_cells(mode):
        latents = sd_pipe("a red star", image, small, num_inference_steps=STEPS, skip_fraction=SKIP,
                          latent_mask_mode=mode, num_images_per_prompt=1, generator=gen(3),
                          output_type="latent").images
        return int(((latents - z0).abs().sum(dim=1) > 0).sum())

    assert edited_cells("top-left") == 1
    assert edited_cells("any") == 4
