"""Soft masks (gray = per-pixel strength), mask grow and blur: the geometry, the schedule of each strength,
binary identity, exact black, and an oracle that each strength's cells still land on the answer."""

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import gen, make_image, make_mask
from diffusers import DDIMScheduler
from test_oracle_schedulers import oracle

from bld.editing import run_edit
from bld.ops.blending import latent_mask
from bld.ops.masks import shape_mask, soft_latent_masks, step_thresholds
from bld.params import EditParams

FAST = dict(num_inference_steps=4, guidance_scale=3.0)


def bands(size=(64, 64), levels=(64, 128, 255), top=8, bottom=56):
    """A mask of vertical bands of the given gray levels (0 elsewhere), each 16 px wide from x = 8."""
    m = np.zeros((size[1], size[0]), np.uint8)
    for k, level in enumerate(levels):
        m[top:bottom, 8 + 16 * k: 24 + 16 * k] = level
    return PIL.Image.fromarray(m)


# -- shaping -----------------------------------------------------------------------------------------------

def test_grow_and_shrink_move_the_edge_by_the_pixels_given():
    mask = make_mask((100, 80), (30, 20, 70, 60))
    grown = shape_mask(mask, (100, 80), invert=False, soft_mask=False, grow=5).strength
    assert grown[40, 25] == 1 and grown[40, 24] == 0 and grown[15, 50] == 1 and grown[14, 50] == 0
    assert grown[40, 74] == 1 and grown[40, 75] == 0
    shrunk = shape_mask(mask, (100, 80), invert=False, soft_mask=False, grow=-5).strength
    assert shrunk[40, 35] == 1 and shrunk[40, 34] == 0 and shrunk[40, 64] == 1 and shrunk[40, 65] == 0
    assert not shape_mask(mask, (100, 80), invert=False, soft_mask=False, grow=5).soft  # still binary


def test_blur_makes_a_soft_edge_that_falls_with_distance_and_inversion_flips_it():
    mask = make_mask((100, 80), (30, 20, 70, 60))
    shaped = shape_mask(mask, (100, 80), invert=False, soft_mask=False, blur=8)
    row = shaped.strength[40]
    assert shaped.soft and row[50] == pytest.approx(1, abs=1e-3) and row[0] == 0
    assert 0.4 < row[30] < 0.6  # the old edge is half strength
    assert all(row[x] <= row[x + 1] for x in range(0, 50))  # rises towards the inside
    inverted = shape_mask(mask, (100, 80), invert=True, soft_mask=False, blur=8).strength
    assert inverted[40, 50] == pytest.approx(0, abs=1e-3) and inverted[40, 0] == pytest.approx(1, abs=1e-3)


def test_gray_is_kept_only_with_soft_mask():
    mask = bands()
    soft = shape_mask(mask, (64, 64), invert=False, soft_mask=True)
    hard = shape_mask(mask, (64, 64), invert=False, soft_mask=False)
    assert soft.soft and soft.strength[30, 10] == pytest.approx(64 / 255)
    assert not hard.soft and hard.strength[30, 10] == 0 and hard.strength[30, 30] == 1  # thresholded at 0.5


# -- the schedule of each strength -------------------------------------------------------------------------

def test_a_cell_of_strength_s_joins_for_the_last_s_of_the_steps():
    assert step_thresholds(4) == [1.0, 0.75, 0.5, 0.25]
    strength = torch.zeros(1, 1, 8, 8)
    strength[..., 0:2] = 1.0
    strength[..., 2:4] = 0.5
    strength[..., 4:6] = 0.25
    strength[..., 6:7] = 0.1  # below 1 / n: never
    masks = soft_latent_masks(strength, (4, 4), "any", 8)
    joined = [int(m[0, 0, 0].sum()) for m in masks]  # cells in a row: columns 0 (1.0), 1 (0.5), 2 (0.25), 3 (0)
    assert joined == [1, 1, 1, 1, 2, 2, 3, 3]
    assert masks[0] is masks[3]  # steps with the same pixels share one mask


def test_each_step_uses_the_latent_mask_mode():
    strength = torch.zeros(1, 1, 8, 8)
    strength[..., 3:5, 3:5] = 1.0  # a 2 px square across four cells
    any_cells = soft_latent_masks(strength, (4, 4), "any", 2)[0]
    inside = soft_latent_masks(strength, (4, 4), "inside", 2)[0]
    assert torch.equal(any_cells, latent_mask((strength >= 1).float(), (4, 4), "any"))
    assert torch.equal(inside, latent_mask((strength >= 1).float(), (4, 4), "inside"))


# -- edits -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("crop", ["off", "auto"])
def test_a_binary_mask_edits_bit_identically_with_soft_mask_on(sd_pipe, crop):
    size = (64, 64) if crop == "off" else (300, 200)
    image, mask = make_image(size), make_mask(size, (16, 16, 40, 48))
    plain = sd_pipe("a red star", image, mask, generator=gen(0), output_type="np", crop=crop, **FAST).images
    soft = sd_pipe("a red star", image, mask, generator=gen(0), output_type="np", crop=crop, soft_mask=True,
                   **FAST).images
    assert np.array_equal(plain, soft)


@pytest.mark.parametrize("reconstruction", ["pixel", "poisson", "decoder"])
def test_black_stays_the_input_and_gray_mixes_the_edit_in(sd_pipe, reconstruction):
    image, mask = make_image(), bands()
    extra = {"reconstruction_steps": 2} if reconstruction == "decoder" else {}
    out = sd_pipe("a red star", image, mask, generator=gen(1), soft_mask=True, reconstruction=reconstruction,
                  **extra, **FAST).images[0]
    out, source = np.asarray(out, dtype=np.float32) / 255, np.asarray(image, dtype=np.float32) / 255
    black = np.asarray(mask) == 0
    assert np.array_equal(out[black], source[black])
    change = [np.abs(out[8:56, x0:x0 + 16] - source[8:56, x0:x0 + 16]).mean() for x0 in (8, 24, 40)]
    assert 0 < change[0] < change[2] and change[1] < change[2]


def test_strength_grows_with_the_gray_level_in_the_latents(sd_pipe):
    """Weaker cells join later, so their final latents stay nearer the source's."""
    image, mask = make_image(), bands(levels=(64, 128, 255))
    z0 = sd_pipe.encode_source(sd_pipe.prepare_image_and_mask(image, mask, None, None, False).image)
    distances = []
    for seed in range(3):
        latents = sd_pipe("a red star", image, mask, generator=gen(seed), output_type="latent", soft_mask=True,
                          crop="off", num_inference_steps=8, skip_fraction=0.0, guidance_scale=3.0).images
        d = (latents - z0).abs()[0].mean(0)  # per latent cell (32 x 32 cells of 2 px)
        distances.append([float(d[4:28, 4 + 8 * k: 12 + 8 * k].mean()) for k in range(3)])
    mean = np.mean(distances, axis=0)
    assert mean[0] < mean[1] < mean[2]
    assert float((latents - z0).abs()[0, :, :, 30:].max()) == 0  # black: the source latent exactly


def test_a_perfect_denoiser_lands_every_joined_cell_on_its_latent(sd_pipe, monkeypatch):
    """The oracle returns the noise towards z*: a cell that joins at any step ends at z*, one whose strength
    is below 1 / n never joins and ends at z0."""
    image = make_image()
    m = np.zeros((64, 64), np.uint8)
    m[8:56, 8:24] = 255
    m[8:56, 24:40] = 128
    m[8:56, 40:48] = 20  # 0.08 < 1 / 8: never joins
    mask = PIL.Image.fromarray(m)
    original = sd_pipe.scheduler
    sd_pipe.scheduler = DDIMScheduler.from_config(original.config, set_alpha_to_one=True)
    z0 = sd_pipe.encode_source(sd_pipe.prepare_image_and_mask(image, mask, None, None, False).image)
    target = torch.randn(z0.shape, generator=torch.Generator().manual_seed(7)) * 0.8
    monkeypatch.setattr(sd_pipe.unet, "forward", oracle(sd_pipe, target))
    try:
        latents = sd_pipe("a red star", image, mask, num_inference_steps=8, skip_fraction=0.0, guidance_scale=1.0,
                          generator=gen(3), output_type="latent", soft_mask=True, crop="off").images
    finally:
        sd_pipe.scheduler = original
    assert (latents - target)[..., 4:28, 4:20].abs().max() < 1e-3  # strengths 1 and 0.5
    assert torch.equal(latents[..., 4:28, 20:24], z0[..., 4:28, 20:24])  # 0.08: cells 20-23 (px 40-47)
    assert torch.equal(latents[..., :, 25:], z0[..., :, 25:])


def test_run_edit_measures_the_background_outside_every_soft_pixel(sd_pipe):
    image, mask = make_image(), bands()
    params = EditParams(prompt="a red star", num_images=1, seed=0, soft_mask=True, mask_blur=4, **FAST)
    (result,) = run_edit(sd_pipe, image, mask, params)
    assert result.metrics["background_psnr"] == float("inf")  # exact wherever the blurred strength is 0
    blurred = shape_mask(mask, (64, 64), invert=False, soft_mask=True, blur=4)
    changed = np.any(np.asarray(result.image) != np.asarray(image), axis=-1)
    assert not (changed & ~blurred.region).any() and (changed & blurred.region).any()
