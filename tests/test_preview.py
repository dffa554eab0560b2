"""What an edit will change, known before it runs: pipe.edit_preview, render_preview, describe_plan."""

import numpy as np
import pytest
from conftest import SIZE, gen, make_image, make_mask

from bld.params import EditParams
from bld.preview import PREVIEW_SIDE, describe_plan, render_preview

FAST = dict(num_inference_steps=4, guidance_scale=3.0)


def test_the_preview_has_the_edits_crops_and_covers_the_mask_with_whole_cells(sd_pipe):
    image, mask = make_image((400, 300)), make_mask((400, 300), (61, 50, 99, 91))
    params = EditParams(prompt="a red star", **FAST)
    preview = sd_pipe.edit_preview(image, mask, params)
    out = sd_pipe("a red star", image, mask, generator=gen(0), **FAST)
    assert [c.to_dict() for c in preview.crops] == out.crops
    region = np.asarray(mask) > 0
    assert preview.area[region].all()  # 'any': every masked pixel lies in a redrawn cell
    assert preview.area.sum() > region.sum()  # the mask's edges are not on the cells' grid
    left, top, right, bottom = preview.crops[0].box
    outside = np.ones_like(preview.area)
    outside[top:bottom, left:right] = False
    assert not preview.area[outside].any()
    assert preview.native_size == sd_pipe.native_size


def test_a_cell_aligned_mask_is_its_own_area_when_the_whole_image_is_edited(sd_pipe):
    mask = make_mask(box=(16, 16, 40, 48))  # even edges: whole 2 px cells of the tiny VAE
    preview = sd_pipe.edit_preview(make_image(), mask, EditParams(prompt="x", crop="off", **FAST))
    assert np.array_equal(preview.area, np.asarray(mask) > 0)
    assert preview.crops[0].covers(SIZE, SIZE)


@pytest.mark.parametrize("mode", ["nearest", "inside"])
def test_the_area_follows_the_latent_mask_mode(sd_pipe, mode):
    mask = make_mask(box=(15, 15, 41, 49))  # odd edges: half cells on each side
    image, params = make_image(), EditParams(prompt="x", crop="off", **FAST)
    wide = sd_pipe.edit_preview(image, mask, params).area
    narrow = sd_pipe.edit_preview(image, mask, EditParams(prompt="x", crop="off", latent_mask_mode=mode, **FAST)).area
    assert narrow.sum() < wide.sum() and not (narrow & ~wide).any()


def test_render_preview_tints_the_mask_dims_the_rest_and_stays_small(sd_pipe):
    image, mask = make_image((2400, 1800)), make_mask((2400, 1800), (600, 500, 1000, 900))
    region = np.asarray(mask) > 0
    preview = sd_pipe.edit_preview(image, mask, EditParams(prompt="x", **FAST))
    picture = render_preview(image, region, preview)
    assert picture.size == (PREVIEW_SIDE, 768)
    pixels, source = np.asarray(picture).astype(int), np.asarray(image.resize(picture.size)).astype(int)
    inside, far = pixels[300, 340], pixels[700, 900]  # in the mask / far outside the crop
    assert inside[0] > 120 and inside[2] > 120 and inside[1] < source[300, 340, 1]  # magenta over the input
    assert (far <= source[700, 900] * 0.5 + 1).all()  # dimmed
    left, top, _, _ = (round(v * PREVIEW_SIDE / 2400) for v in preview.crops[0].box)
    assert tuple(pixels[top + 20, left]) == (255, 220, 0)  # the crop's outline


def test_describe_plan_says_what_is_edited_at_what_size_and_the_steps(sd_pipe):
    image, mask = make_image((400, 300)), make_mask((400, 300), (60, 50, 100, 90))
    params = EditParams(prompt="x", num_inference_steps=8, skip_fraction=0.25, num_images=3)
    preview = sd_pipe.edit_preview(image, mask, params)
    text = describe_plan(preview, params, image.size)
    crop = preview.crops[0]
    assert f"1 crop around the mask ({crop.box_size[0]}x{crop.box_size[1]} drawn at {crop.width}x{crop.height})" in text
    assert "native size is 64 px" in text and "6 denoising steps x 3 results" in text
    whole = sd_pipe.edit_preview(make_image(), make_mask(), params)
    assert "the whole 64x64 image, drawn at 64x64" in describe_plan(whole, params, (SIZE, SIZE))
