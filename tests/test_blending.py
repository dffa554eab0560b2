"""The pure functions of the method (PAPER.md section 1)."""

import numpy as np
import PIL.Image
import pytest
import torch

from bld.ops.blending import binarize_mask, blend, latent_mask, num_skipped_steps


def test_binarize_thresholds_at_half():
    soft = torch.tensor([0.0, 0.49, 0.5, 0.51, 1.0])
    assert binarize_mask(soft).tolist() == [0, 0, 1, 1, 1]


def thin_line(offset: int) -> torch.Tensor:
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., :, offset] = 1  # a vertical line one pixel wide
    return mask


@pytest.mark.parametrize("offset", [0, 3, 7, 13])
def test_any_mode_keeps_a_one_pixel_line(offset):
    lm = latent_mask(thin_line(offset), (8, 8), "any")
    assert lm[0, 0, :, offset // 8].eq(1).all()
    assert lm.sum() == 8


def test_nearest_mode_drops_a_line_between_samples():
    # nearest samples pixel 8k + 4, the center of every 8x8 cell: a line at column 3 falls between samples
    assert latent_mask(thin_line(3), (8, 8), "nearest").sum() == 0
    assert latent_mask(thin_line(4), (8, 8), "nearest").sum() == 8
    assert latent_mask(thin_line(8), (8, 8), "nearest").sum() == 0
    # top-left samples pixel 8k
    assert latent_mask(thin_line(8), (8, 8), "top-left").sum() == 8
    assert latent_mask(thin_line(4), (8, 8), "top-left").sum() == 0


@pytest.mark.parametrize("size, latent_size", [((64, 48), (8, 6)), ((100, 70), (12, 8)), ((37, 53), (5, 7)),
                                               ((512, 384), (64, 48))])
def test_nearest_matches_the_papers_pil_resize(size, latent_size):
    """The official code downsamples the mask with PIL's NEAREST, which samples each cell's center."""
    mask = (torch.rand(1, 1, *size, generator=torch.Generator().manual_seed(0)) > 0.6).float()
    pil = PIL.Image.fromarray((mask[0, 0].numpy() * 255).astype(np.uint8))
    expected = np.asarray(pil.resize(latent_size[::-1], PIL.Image.NEAREST)) > 0
    assert np.array_equal(latent_mask(mask, latent_size, "nearest")[0, 0].numpy() > 0, expected)


def test_top_left_matches_diffusers_interpolation():
    mask = (torch.rand(1, 1, 64, 48, generator=torch.Generator().manual_seed(0)) > 0.7).float()
    expected = torch.nn.functional.interpolate(mask, size=(8, 6))
    assert torch.equal(latent_mask(mask, (8, 6), "top-left"), expected)


def test_any_mode_is_a_superset_of_nearest():
    mask = (torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(1)) > 0.95).float()
    any_mask, nearest = latent_mask(mask, (8, 8), "any"), latent_mask(mask, (8, 8), "nearest")
    assert (any_mask >= nearest).all()
    assert any_mask.sum() > nearest.sum()


def test_inside_mode_keeps_only_cells_the_mask_covers_whole():
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 5:27, 8:24] = 1  # rows 5-26 cover cells 1-2 whole and touch cells 0 and 3; columns 1-2 exactly
    inside = latent_mask(mask, (8, 8), "inside")
    expected = torch.zeros(1, 1, 8, 8)
    expected[..., 1:3, 1:3] = 1
    assert torch.equal(inside, expected)
    assert latent_mask(mask, (8, 8), "any").sum() == 8  # cells 0-3 by 1-2


def test_inside_mode_keeps_a_thin_stroke_on_its_own_and_drops_one_joined_to_a_region():
    mask = thin_line(3)  # on its own: covers no cell whole, so it keeps the cells it touches
    mask[..., 40:64, 40:64] = 1  # a region of whole cells elsewhere
    inside, touched = latent_mask(mask, (8, 8), "inside"), latent_mask(mask, (8, 8), "any")
    assert inside[0, 0, :, 0].eq(1).all()
    assert torch.equal(inside[0, 0, 5:, 5:], touched[0, 0, 5:, 5:])  # the region's cells are whole
    joined = mask.clone()
    joined[..., 44, 3:40] = 1  # a one-pixel bridge joins the stroke to the region: only whole cells stay
    assert latent_mask(joined, (8, 8), "inside")[0, 0, :, 0].eq(0).all()
    assert latent_mask(torch.zeros(2, 1, 64, 64), (8, 8), "inside").sum() == 0


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="'bilinear' is not one of any, nearest, inside"):
        latent_mask(thin_line(0), (8, 8), "bilinear")


@pytest.mark.parametrize("steps,fraction,skipped", [(50, 0.25, 12), (4, 0.25, 1), (10, 0.0, 0), (50, 0.99, 49)])
def test_skipped_steps_follow_the_official_rounding(steps, fraction, skipped):
    assert num_skipped_steps(steps, fraction) == skipped


def test_blend_takes_foreground_inside_and_background_outside():
    fg, bg = torch.full((1, 4, 2, 2), 5.0), torch.full((1, 4, 2, 2), -3.0)
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    out = blend(fg, bg, mask)
    assert out[0, :, 0, 0].eq(5).all() and out[0, :, 0, 1].eq(-3).all()
