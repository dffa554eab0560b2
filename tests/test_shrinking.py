"""Progressive mask shrinking for thin masks (PAPER.md section 3)."""

import numpy as np
import pytest
import torch
from conftest import SIZE, gen

from bld.ops.blending import dilate, latent_mask, phase_of_step, shrinking_masks


def point_mask(size=16):
    mask = torch.zeros(1, 1, size, size)
    mask[..., size // 2, size // 2] = 1
    return mask


def test_dilation_kernels_are_3_plus_2i_largest_first():
    masks = shrinking_masks(point_mask(), 3)
    assert [int(m.sum()) for m in masks] == [7 * 7, 5 * 5, 3 * 3, 1]
    assert torch.equal(masks[-1], point_mask())


def test_zero_iterations_is_the_mask_alone():
    masks = shrinking_masks(point_mask(), 0)
    assert len(masks) == 1 and torch.equal(masks[0], point_mask())


def test_dilate_is_binary_and_grows_by_half_the_kernel():
    grown = dilate(point_mask(), 5)
    assert set(grown.unique().tolist()) == {0.0, 1.0}
    rows = grown[0, 0].sum(dim=1).nonzero().flatten().tolist()
    assert rows == [6, 7, 8, 9, 10]


@pytest.mark.parametrize("steps,phases,expected", [
    (8, 4, [0, 0, 1, 1, 2, 2, 3, 3]),
    (6, 3, [0, 0, 1, 1, 2, 2]),
    (3, 4, [0, 1, 3]),  # fewer steps than phases: the last step still uses the original mask
    (5, 1, [0, 0, 0, 0, 0]),
])
def test_equal_phases_and_the_last_step_uses_the_original(steps, phases, expected):
    assert [phase_of_step(i, steps, phases) for i in range(steps)] == expected


def test_pipeline_walks_the_schedule_on_a_thin_line(sd_pipe, image):
    thin = np.zeros((SIZE, SIZE), np.uint8)
    thin[8:56, 30:32] = 255  # a line 2 px wide: one latent column at factor 2
    used = []
    latents = sd_pipe("a red line", image, thin, num_inference_steps=16, skip_fraction=0.25,
                      num_images_per_prompt=1, generator=gen(0), mask_dilation_iterations=3, output_type="latent",
                      callback_on_step_end=lambda p, i, t, state: used.append(state["mask"].clone()) or {}).images
    assert len(used) == 12  # 16 steps, 4 skipped, 4 phases of 3 steps
    prepared = sd_pipe.prepare_image_and_mask(image, thin, None, None, False)
    z0 = sd_pipe.encode_source(prepared.image)

    original = latent_mask(prepared.mask, tuple(z0.shape[-2:]), "any")
    expected = shrinking_masks(original, 3)
    for step, mask in enumerate(used):
        assert torch.equal(mask[:1], expected[step // 3]), f"step {step}"
    assert [int(m[0].sum()) for m in used[::3]] == [int(m.sum()) for m in expected]
    assert int(used[0][0].sum()) > int(used[-1][0].sum())
    # the last phase uses the original mask, so outside the line the final latent is the source
    outside = (original == 0).expand_as(latents)
    assert torch.equal(latents[outside], z0[outside])
