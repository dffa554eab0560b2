"""bld.ops.metrics: background PSNR / SSIM, seam color difference, input checks. Real photos from scikit-image."""

import math

import numpy as np
import PIL.Image
import pytest
from conftest import SIZE, make_image, make_mask
from scipy import ndimage
from skimage import data
from skimage.color import deltaE_ciede2000, rgb2lab

from bld.ops.metrics import background_psnr, background_ssim, compute_metrics, edge_color_difference

BOX = (16, 12, 44, 48)  # left, top, right, bottom
SHIFT = np.array([0.15, -0.10, 0.05])


def photo(name: str = "chelsea", size: int = SIZE) -> np.ndarray:
    """A real photograph from scikit-image, resized to size x size, float in [0, 1]."""
    rgb = PIL.Image.fromarray(getattr(data, name)()).resize((size, size), PIL.Image.LANCZOS)
    return np.asarray(rgb, dtype=np.float64) / 255.0


def box_mask(box=BOX, size=SIZE) -> np.ndarray:
    m = np.zeros((size, size), bool)
    left, top, right, bottom = box
    m[top:bottom, left:right] = True
    return m


@pytest.fixture
def mask():
    return box_mask()


def test_psnr_inf_for_identical_background_whatever_the_edit(mask):
    original = photo()
    edited = original.copy()
    edited[mask] = np.random.default_rng(0).random((mask.sum(), 3))  # inside: anything
    assert background_psnr(original, original, mask) == math.inf
    assert background_psnr(original, edited, mask) == math.inf
    # The same edit judged with the inverted mask is a background change.
    assert background_psnr(original, edited, ~mask) < 20


def test_psnr_value_and_drop_when_outside_changes(mask):
    gray = np.full((SIZE, SIZE, 3), 0.5)
    shifted = gray.copy()
    shifted[~mask] += 0.1  # MSE 0.01 over the background -> exactly 20 dB
    shifted[mask] = 0.0  # inside changes must not count
    assert background_psnr(gray, shifted, mask) == pytest.approx(20.0, abs=1e-9)

    original = photo("astronaut")
    rng = np.random.default_rng(1)
    small = np.clip(original + 0.01 * rng.standard_normal(original.shape) * ~mask[..., None], 0, 1)
    large = np.clip(original + 0.05 * rng.standard_normal(original.shape) * ~mask[..., None], 0, 1)
    psnr_small, psnr_large = background_psnr(original, small, mask), background_psnr(original, large, mask)
    assert math.isfinite(psnr_small) and 35 < psnr_small < 45
    assert psnr_large < psnr_small - 10
    # Same number as a direct computation over the outside pixels.
    mse = np.mean((original[~mask] - large[~mask]) ** 2)
    assert psnr_large == pytest.approx(10 * np.log10(1 / mse), rel=1e-12)


def test_psnr_accepts_pil_and_uint8_like_floats(mask):
    original = photo()
    result = original.copy()
    result[:4] = 1 - result[:4]  # top rows (outside the box) changed
    as_pil = lambda a: PIL.Image.fromarray(np.round(a * 255).astype(np.uint8))  # noqa: E731
    pil_mask = PIL.Image.fromarray(mask.astype(np.uint8) * 255, "L")
    from_floats = background_psnr(np.round(original * 255) / 255, np.round(result * 255) / 255, mask)
    assert background_psnr(as_pil(original), as_pil(result), pil_mask) == pytest.approx(from_floats, rel=1e-9)
    assert background_psnr((original * 255).round().astype(np.uint8), (result * 255).round().astype(np.uint8),
                           mask.astype(float)) == pytest.approx(from_floats, rel=1e-9)


def test_ssim_is_one_for_identical_outside_and_ignores_inside(mask):
    original = photo()
    edited = original.copy()
    edited[mask] = np.clip(original[mask] + SHIFT, 0, 1)
    edited[mask] = edited[mask][::-1]  # scramble the inside as well
    assert background_ssim(original, original, mask) == pytest.approx(1.0, abs=1e-9)
    assert background_ssim(original, edited, mask) == pytest.approx(1.0, abs=1e-9)


def test_ssim_drops_when_outside_changes(mask):
    original = photo("coffee")
    noisy = np.clip(original + 0.1 * np.random.default_rng(2).standard_normal(original.shape), 0, 1)
    value = background_ssim(original, noisy, mask)
    assert 0 < value < 0.9
    # A change right next to the boundary, outside, is seen too.
    ring = ndimage.binary_dilation(mask, iterations=2) & ~mask
    near = original.copy()
    near[ring] = 1 - near[ring]
    assert background_ssim(original, near, mask) < 0.99


def test_edge_delta_e_exact_for_flat_colors(mask):
    outside, inside = np.array([0.2, 0.4, 0.6]), np.array([0.7, 0.3, 0.2])
    image = np.broadcast_to(outside, (SIZE, SIZE, 3)).copy()
    assert edge_color_difference(image, mask) == pytest.approx(0.0, abs=1e-9)
    image[mask] = inside
    expected = float(deltaE_ciede2000(rgb2lab(inside[None, None]), rgb2lab(outside[None, None]))[0, 0])
    for width in (1, 2, 5):
        assert edge_color_difference(image, mask, width=width) == pytest.approx(expected, rel=1e-9)
    # A 1 px stroke: the strips stop at the stroke's other side instead of averaging across it.
    stroke = np.zeros((SIZE, SIZE), bool)
    stroke[10:50, 30] = True
    image = np.broadcast_to(outside, (SIZE, SIZE, 3)).copy()
    image[stroke] = inside
    assert edge_color_difference(image, stroke, width=3) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("name", ["chelsea", "astronaut"])
def test_edge_delta_e_hard_paste_scores_higher_than_seamless(name, mask):
    original = photo(name)
    hard = original.copy()
    hard[mask] = np.clip(original[mask] + SHIFT, 0, 1)
    # The same color shift, faded in over 8 px inside the boundary: no visible seam.
    ramp = np.clip(ndimage.distance_transform_edt(mask) / 8, 0, 1)[..., None]
    seamless = np.clip(original + ramp * SHIFT, 0, 1)
    untouched, soft, pasted = (edge_color_difference(x, mask) for x in (original, seamless, hard))
    assert soft < untouched + 3
    assert pasted > 1.5 * soft and pasted - soft > 5


def test_edge_delta_e_ignores_colors_far_from_the_boundary(mask):
    original = photo()
    far = original.copy()
    core = ndimage.binary_erosion(mask, iterations=3)
    far[core] = 0.0  # deep inside, more than `width` px from the boundary
    far[:3, :3] = 1.0  # far outside
    assert edge_color_difference(far, mask) == pytest.approx(edge_color_difference(original, mask), rel=1e-12)


def test_undefined_values_are_nan():
    image = photo()
    empty, full = np.zeros((SIZE, SIZE)), np.ones((SIZE, SIZE))
    assert math.isnan(edge_color_difference(image, empty))
    assert math.isnan(edge_color_difference(image, full))
    assert math.isnan(background_psnr(image, image, full))
    assert math.isnan(background_ssim(image, image, full))
    assert background_psnr(image, image, empty) == math.inf


def test_mask_size_mismatch_is_a_one_line_error():
    image = make_image()
    small_mask = make_mask(size=(32, 48), box=(4, 4, 20, 20))
    for call in (lambda: background_psnr(image, image, small_mask),
                 lambda: background_ssim(image, image, small_mask),
                 lambda: edge_color_difference(image, small_mask),
                 lambda: compute_metrics(image, image, np.zeros((48, 32)))):
        with pytest.raises(ValueError) as info:
            call()
        message = str(info.value)
        assert "\n" not in message
        assert "mask is 32x48" in message and "64x64" in message


def test_other_input_errors():
    image = photo()
    with pytest.raises(ValueError, match="original is 64x64 but result is 32x32"):
        background_psnr(image, image[:32, :32], box_mask())
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        background_psnr(image * 2, image, box_mask())
    with pytest.raises(ValueError, match="width must be an integer >= 1"):
        edge_color_difference(image, box_mask(), width=0)
    with pytest.raises(ValueError, match=r"array \(H, W, 3\)"):
        background_psnr(image[..., 0], image[..., 0], box_mask())


def test_compute_metrics_keys_and_values(mask):
    original = photo()
    result = original.copy()
    result[mask] = np.clip(original[mask] + SHIFT, 0, 1)
    metrics = compute_metrics(original, result, mask)
    assert set(metrics) == {"background_psnr", "background_ssim", "edge_delta_e"}
    assert metrics["background_psnr"] == math.inf
    assert metrics["background_ssim"] == pytest.approx(1.0)
    assert metrics["edge_delta_e"] == pytest.approx(edge_color_difference(result, mask))
    assert all(isinstance(v, float) for v in metrics.values())
    assert "text_match" not in compute_metrics(original, result, mask, prompt="a cat")
