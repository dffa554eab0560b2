"""Background reconstruction (PAPER.md section 2), checked with a small VAE trained on real photographs.

A random tiny VAE reconstructs nothing, so these tests first train (once per session, cached on disk
under pytest's cache dir when it is enabled) a small AutoencoderKL, factor 2, on random crops of
photographs shipped with scikit-image. Its plain reconstruction D(E(x)) of a held-out photo is about
24 dB: imperfect, as the paper's premise needs. The scene is a crop of `coffee` (held out) with a
rectangle replaced by a piece of `astronaut`, passed through the VAE, as a decoded edit would be.
"""

from __future__ import annotations

import time

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import AutoencoderKL

from bld.ops.reconstruction import (
    METHODS,
    crop_box,
    preserved_decoder,
    psnr,
    reconstruct_background,
    reconstruct_images,
)
from bld.testing.photo_vae import pasted_edit, photo, train_photo_vae


def edit_scene(vae, size: int = 64, seed: int = 0):
    """(original, edited, latents, mask): a held-out photo crop, a random rectangle (sides 1/4 to 1/2 of
    the image) replaced by a distinctly different photo piece, encoded and decoded by the VAE."""
    rng = np.random.default_rng(seed)
    original = photo("coffee")[..., 150:150 + size, 300:300 + size]
    other = photo("astronaut")[..., 350:350 + size, 100:100 + size]
    h, w = rng.integers(size // 4, size // 2 + 1, size=2)
    top, left = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
    mask = torch.zeros(1, 1, size, size)
    mask[..., top:top + h, left:left + w] = 1
    edited, latents = pasted_edit(vae, original, other, mask)
    return original, edited, latents, mask


def grad_error(a: torch.Tensor, b: torch.Tensor, where: torch.Tensor) -> float:
    """Mean absolute difference of the horizontal and vertical finite differences of a and b where `where`."""
    errors = []
    for dim in (-1, -2):
        da, db = a.diff(dim=dim), b.diff(dim=dim)
        both = where.narrow(dim, 1, where.shape[dim] - 1) & where.narrow(dim, 0, where.shape[dim] - 1)
        errors.append((da - db).abs()[both.expand_as(da)])
    return float(torch.cat(errors).mean())


# --- Fixtures ------------------------------------------------------------------------------------------

SIZE = 64
FULL_STEPS = 200  # the paper's lr 1e-4 with more steps than its 75: see test_decoder_background_reaches_35_db
CROP_MARGIN = 8


@pytest.fixture(scope="module")
def vae(request, tmp_path_factory):
    cache = getattr(request.config, "cache", None)
    folder = cache.mkdir("bld-photo-vae") if cache is not None else tmp_path_factory.mktemp("photo-vae")
    return train_photo_vae(folder)


@pytest.fixture(scope="module")
def scene(vae):
    return edit_scene(vae, SIZE)


@pytest.fixture(scope="module")
def results(vae, scene):
    """Each method's result on the scene, with its time in seconds."""
    original, edited, latents, mask = scene
    runs = {"none": {}, "pixel": {}, "poisson": {}, "latent": {}, "decoder": {},
            "decoder-long": dict(steps=FULL_STEPS),
            "decoder-long-crop": dict(steps=FULL_STEPS, crop=True, crop_margin=CROP_MARGIN)}
    out = {}
    for name, kwargs in runs.items():
        start = time.perf_counter()
        result = reconstruct_background(name.split("-")[0], original, edited, mask, vae=vae, latents=latents,
                                        **kwargs)
        out[name] = (result, time.perf_counter() - start)
    return out


def bg(result, scene) -> float:
    original, _, _, mask = scene
    return psnr(result, original, mask == 0)


def inside(result, reference, scene) -> float:
    return psnr(result, reference, scene[3] == 1)


# --- Arguments -----------------------------------------------------------------------------------------

def test_methods():
    assert METHODS == ("none", "pixel", "poisson", "latent", "decoder")


@pytest.mark.parametrize("call, match", [
    (lambda x, m, v: reconstruct_background("blur", x, x, m), "method='blur' is not one of none, pixel"),
    (lambda x, m, v: reconstruct_background("decoder", x, x, m), "method='decoder' needs the VAE"),
    (lambda x, m, v: reconstruct_background("latent", x, x, m), "method='latent' needs the VAE"),
    (lambda x, m, v: reconstruct_background("pixel", x[..., :8], x, m), r"original has shape \(1, 3, 16, 8\)"),
    (lambda x, m, v: reconstruct_background("pixel", x, x, m[..., :8, :]), r"mask has shape \(1, 1, 8, 16\)"),
    (lambda x, m, v: reconstruct_background("pixel", x, x.repeat(2, 1, 1, 1), m.repeat(3, 1, 1, 1)),
     r"mask has shape \(3, 1, 16, 16\): it must be \(1 or 2, 1, 16, 16\)"),
    (lambda x, m, v: reconstruct_background("pixel", x[0], x, m), r"original must be a 4-D tensor"),
    (lambda x, m, v: reconstruct_background("pixel", x, x[:, :1], m), "edited must have 3 channels"),
    (lambda x, m, v: reconstruct_background("pixel", x, x, m, feather=-1), "feather=-1"),
    (lambda x, m, v: reconstruct_background("decoder", x, x, m, vae=v, steps=-3), "steps=-3"),
    (lambda x, m, v: reconstruct_background("decoder", x, x, m, vae=v, lr=0), "lr=0"),
    (lambda x, m, v: reconstruct_background("decoder", x[..., :15, :15], x[..., :15, :15], m[..., :15, :15], vae=v),
     "images are 15x15: for method='decoder' each side must be a multiple of the VAE factor 2"),
    (lambda x, m, v: reconstruct_background("latent", x, x, m, vae=v, latents=torch.zeros(1, 4, 16, 16)),
     r"latents have shape \(1, 4, 16, 16\): expected \(1, 4, 8, 8\)"),
])
def test_bad_arguments_raise_one_line_value_errors(vae, call, match):
    x = torch.zeros(1, 3, 16, 16)
    m = torch.zeros(1, 1, 16, 16)
    with pytest.raises(ValueError, match=match) as info:
        call(x, m, vae)
    assert "\n" not in str(info.value)


def test_crop_box_is_aligned_and_clipped():
    mask = torch.zeros(64, 64, dtype=torch.bool)
    mask[21:30, 3:40] = True
    assert crop_box(mask, 4, 8) == (16, 40, 0, 48)  # 17..34 -> 16..40; -1 -> 0 .. 44 -> 48
    assert crop_box(mask, 0, 1) == (21, 30, 3, 40)
    assert crop_box(mask, 100, 8) == (0, 64, 0, 64)
    assert crop_box(torch.zeros(8, 8, dtype=torch.bool), 4, 2) is None


# --- none and pixel ------------------------------------------------------------------------------------

def test_none_returns_the_edit(results, scene):
    assert torch.equal(results["none"][0], scene[1])


def test_pixel_is_the_original_outside_and_the_edit_inside_bitwise(results, scene):
    original, edited, _, mask = scene
    result = results["pixel"][0]
    outside, ins = (mask == 0).expand_as(result), (mask == 1).expand_as(result)
    assert torch.equal(result[outside], original[outside])
    assert torch.equal(result[ins], edited[ins])


def test_pixel_feather_ramps_inside_the_mask_only():
    original = torch.full((1, 3, 32, 32), -1.0)
    edited = torch.full((2, 3, 32, 32), 1.0)
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:24, 10:30] = 1
    result = reconstruct_background("pixel", original, edited, mask, feather=4)
    weight = (result + 1) / 2
    assert torch.equal(result[(mask == 0).expand_as(result)], original.expand_as(result)[(mask == 0).expand_as(result)])
    # a row through the middle: outside 0; inside, (d - 0.5) / 4 for the distance d to the unmasked pixels
    row = weight[0, 0, 16, 8:30]
    expected = torch.tensor([0, 0, 0.125, 0.375, 0.625, 0.875] + [1] * 12 + [0.875, 0.625, 0.375, 0.125])
    assert torch.allclose(row, expected)
    assert torch.equal(result[..., 12:20, 14:26], edited[..., 12:20, 14:26])  # deeper than 4 px: the edit, exactly


# --- poisson -------------------------------------------------------------------------------------------

def test_poisson_changes_only_the_mask_and_keeps_the_edit_gradients(results, scene):
    original, edited, _, mask = scene
    result = results["poisson"][0]
    outside = (mask == 0).expand_as(result)
    assert torch.equal(result[outside], original[outside])
    box = crop_box(mask[0, 0] > 0, 0)
    in_box = torch.zeros_like(mask, dtype=torch.bool)
    in_box[..., box[0]:box[1], box[2]:box[3]] = True
    interior = torch.zeros_like(in_box)  # OpenCV erodes the mask by 3 px: look deeper than that
    interior[..., box[0] + 4:box[1] - 4, box[2] + 4:box[3] - 4] = True
    # Poisson keeps the edit's gradients inside (gradient error 0.024 vs the edit's, 0.058 vs the original's) ...
    assert grad_error(result, edited, interior) < 0.6 * grad_error(result, original, interior)
    # ... and takes its colors from the original's boundary: the paper's "color shift" (9.9 dB vs the edit)
    assert inside(result, edited, scene) < 15


@pytest.mark.parametrize("box", [(0, 20, 0, 24), (40, 64, 10, 64), (0, 64, 50, 64), (0, 64, 0, 64)])
def test_poisson_handles_masks_touching_the_border(scene, box):
    original, edited, _, _ = scene
    top, bottom, left, right = box
    mask = torch.zeros(1, 1, SIZE, SIZE)
    mask[..., top:bottom, left:right] = 1
    result = reconstruct_background("poisson", original, edited, mask)
    outside = (mask == 0).expand_as(result)
    assert torch.equal(result[outside], original[outside])  # the mask is its own box here
    inner = torch.zeros_like(mask, dtype=torch.bool)
    inner[..., top:bottom, left:right] = True
    # the result follows the edit's gradients (errors 0.017/0.034/0.013/0.007 vs the edit's, 0.027/0.045/0.034/
    # 0.046 vs the original's, measured in the order of the boxes) ...
    assert grad_error(result, edited, inner) < 0.8 * grad_error(result, original, inner)
    # ... and at the image border the region is solved, not pinned to the original (max change there
    # 0.12/0.38/0.52/0.52 measured); seamlessClone on the unpadded image would pin it
    border = inner.clone()
    border[..., 1:-1, 1:-1] = False
    assert (result - original).abs()[border.expand_as(result)].max() > 0.06


def test_poisson_keeps_the_hole_of_an_inverted_mask(scene):
    original, edited, _, _ = scene
    mask = torch.ones(1, 1, SIZE, SIZE)
    mask[..., 20:44, 16:40] = 0  # background edit: everything but a kept rectangle, inside the mask's box
    result = reconstruct_background("poisson", original, edited, mask)
    assert torch.equal(result[..., 20:44, 16:40], original[..., 20:44, 16:40])
    assert not torch.allclose(result[..., 2:16, 2:60], original[..., 2:16, 2:60], atol=0.05)


def test_poisson_handles_several_components_and_thin_ones(scene):
    original, edited, _, _ = scene
    mask = torch.zeros(1, 1, SIZE, SIZE)
    mask[..., 4:20, 4:20] = 1
    mask[..., 40:60, 30:60] = 1
    mask[..., 30:32, 0:64] = 1  # 2 px thin: nothing to solve inside, stays the original
    result = reconstruct_background("poisson", original, edited, mask)
    keep = torch.ones_like(mask, dtype=torch.bool)
    keep[..., 4:20, 4:20] = keep[..., 40:60, 30:60] = False
    assert torch.equal(result[keep.expand_as(result)], original[keep.expand_as(result)])
    for top, bottom, left, right in ((5, 19, 5, 19), (41, 59, 31, 59)):
        assert not torch.allclose(result[..., top:bottom, left:right], original[..., top:bottom, left:right], atol=0.05)


# --- latent and decoder: the background --------------------------------------------------------------

def test_background_psnr_ranks_the_methods(results, scene):
    """Measured (64 px held-out photo, 780 masked px; VAE D(E(x)) 23.4 dB): background PSNR none 23.4,
    latent 27.3, decoder (paper defaults) 34.3, decoder 200 steps 37.4; pixel and poisson exact."""
    values = {name: bg(result, scene) for name, (result, _) in results.items()}
    assert 21 < values["none"] < 26  # 23.4: the VAE is imperfect
    assert values["latent"] > values["none"] + 2.5  # 27.3
    assert values["decoder"] > values["latent"] + 4  # 34.3
    assert values["pixel"] == values["poisson"] == float("inf")


def test_decoder_background_reaches_35_db(results, scene):
    """The paper's defaults (lr 1e-4, 75 steps) reach 34.3 dB here (34.0 with a VAE trained on one
    thread), not 35. Measured why: what limits this small decoder (32/64 channels, 0.4 M parameters, vs
    49 M in SD's) is how much background detail it must memorize in its weights. With the defaults the
    same recipe reaches 35.4, 34.3 and 28.2 dB for 829, 3316 and 13204 background pixels (32, 64 and 128
    px scenes); more steps help by about 2 dB per doubling (30.7, 32.7, 33.6, 35.5, 37.5 dB after 25,
    50, 75, 150, 300 steps on a similar scene), a larger learning rate does not (3x: +0.3 dB, 10x: -1.9 dB
    at 75 steps). So the 35 dB bar is checked with the paper's lr and 200 steps: 37.4 dB measured."""
    original, edited, _, _ = scene
    result = results["decoder-long"][0]
    assert bg(result, scene) >= 35  # 37.4 measured (37.1 with a VAE trained on one thread)
    assert bg(results["decoder"][0], scene) >= 33  # 34.3 measured with the paper's defaults
    assert inside(result, edited, scene) > 21.5  # 24.3 measured: inside, the result stays near the edit ...
    assert inside(result, original, scene) < 14  # 11.2 measured: ... and far from the original (10.5 for the edit)


def test_a_lower_background_weight_keeps_the_edit_and_most_of_the_background(vae, results, scene):
    """The paper's weight 100 against 10 (the bundled model's): inside the mask the result stays closer to
    the edit's first decoding (measured 21.5 -> 26.3 dB), for a little background (33.8 -> 33.6 dB)."""
    original, edited, latents, mask = scene
    light = reconstruct_background("decoder", original, edited, mask, vae=vae, latents=latents, background_weight=10)
    paper = results["decoder"][0]
    assert inside(light, edited, scene) > inside(paper, edited, scene) + 2
    assert bg(light, scene) > bg(paper, scene) - 1


def test_crop_matches_the_full_fine_tune_and_is_the_original_outside_the_crop(results, scene):
    original, edited, _, mask = scene
    full, cropped = results["decoder-long"][0], results["decoder-long-crop"][0]
    top, bottom, left, right = crop_box(mask[0, 0] > 0, CROP_MARGIN, 2)
    in_crop = torch.zeros_like(mask, dtype=torch.bool)
    in_crop[..., top:bottom, left:right] = True
    outside_crop = (~in_crop).expand_as(cropped)
    assert outside_crop.any()
    assert torch.equal(cropped[outside_crop], original[outside_crop])
    crop_background = in_crop & (mask == 0)
    # background inside the crop: 37.9 dB cropped vs 37.8 for the full fine-tune there (measured; 42.2 vs 37.4
    # over the whole background, since outside the crop it is exact), in 3.5 s vs 5.4 s
    assert psnr(cropped, original, crop_background) > psnr(full, original, crop_background) - 1.5
    assert inside(cropped, edited, scene) > 21.5  # 25.2 measured


def test_latent_and_decoder_leave_no_graph_and_work_under_no_grad(vae, scene):
    original, edited, latents, mask = scene
    with torch.no_grad():
        for method, kwargs in (("latent", dict(steps=5, lr=0.03)), ("decoder", dict(steps=10))):
            result = reconstruct_background(method, original, edited, mask, vae=vae, latents=latents, **kwargs)
            assert not result.requires_grad and result.grad_fn is None
            assert bg(result, scene) > bg(edited, scene) + 1.5  # +2.3 dB (latent), +5.6 dB (decoder) measured


def test_without_latents_the_posterior_mean_is_used(vae, scene):
    original, edited, _, mask = scene
    result = reconstruct_background("decoder", original, edited, mask, vae=vae, steps=10)
    assert bg(result, scene) > bg(edited, scene) + 3  # +4.3 dB measured (+5.6 dB with the true latents)


# --- latent and decoder: the VAE is left as it was -----------------------------------------------------

def snapshot(vae):
    """Weights, requires_grad flags, train/eval modes and .grad of every parameter and module of the VAE."""
    return ({k: v.clone() for k, v in vae.state_dict().items()},
            {n: p.requires_grad for n, p in vae.named_parameters()},
            {n: m.training for n, m in vae.named_modules()},
            {n: None if p.grad is None else p.grad.clone() for n, p in vae.named_parameters()})


def assert_unchanged(vae, before):
    weights, flags, modes, grads = snapshot(vae)
    assert weights.keys() == before[0].keys()
    for key, value in before[0].items():
        assert weights[key].dtype == value.dtype and torch.equal(weights[key], value), key
    assert flags == before[1] and modes == before[2]
    for name, grad in before[3].items():
        assert (grads[name] is None) if grad is None else torch.equal(grads[name], grad), name


@pytest.fixture
def odd_state_vae(vae):
    """The VAE in train mode, the encoder and one decoder layer frozen, a stale .grad on the decoder's
    output layer; put back afterwards."""
    vae.train()
    vae.encoder.requires_grad_(False)
    vae.decoder.conv_in.requires_grad_(False)
    vae.decoder.conv_out.weight.grad = torch.ones_like(vae.decoder.conv_out.weight)
    yield vae
    vae.eval()
    vae.requires_grad_(True)
    vae.decoder.conv_out.weight.grad = None


@pytest.mark.parametrize("method", ["latent", "decoder"])
def test_vae_is_bit_identical_afterwards(odd_state_vae, scene, method):
    original, edited, latents, mask = scene
    before = snapshot(odd_state_vae)
    reconstruct_background(method, original, edited, mask, vae=odd_state_vae, latents=latents, steps=5, lr=1e-2)
    assert_unchanged(odd_state_vae, before)


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_decoder_is_restored_after_an_exception_mid_optimization(odd_state_vae, scene, monkeypatch, error):
    original, edited, latents, mask = scene
    before = snapshot(odd_state_vae)
    real_step, calls = torch.optim.Adam.step, []

    def step(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise error("interrupted on step 5")
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    with pytest.raises(error, match="step 5"):
        reconstruct_background("decoder", original, edited, mask, vae=odd_state_vae, latents=latents, lr=1e-2)
    assert len(calls) == 5
    assert_unchanged(odd_state_vae, before)


def test_preserved_decoder_restores_dtype_and_parameter_objects(vae):
    half = AutoencoderKL.from_config(vae.config).half().eval()
    before = snapshot(half)
    objects = [id(p) for p in half.decoder.parameters()]
    with preserved_decoder(half):
        half.decoder.float().train()
        for p in half.decoder.parameters():
            p.data.add_(1)
    assert [id(p) for p in half.decoder.parameters()] == objects
    assert_unchanged(half, before)


def test_float16_vae_optimizes_in_float32_and_is_restored(vae, scene):
    original, edited, latents, mask = scene
    half = AutoencoderKL.from_config(vae.config)
    half.load_state_dict(vae.state_dict())
    half.half().eval()
    before = snapshot(half)
    result = reconstruct_background("decoder", original, edited.half(), mask, vae=half, steps=10)
    assert result.dtype == torch.float16
    assert bg(result.float(), scene) > bg(edited, scene) + 3  # +4.3 dB measured, as in float32
    assert_unchanged(half, before)


@pytest.mark.parametrize("crop", [False, True])
def test_batch_results_are_independent_fine_tunes(vae, scene, crop):
    """Each result of a batch is fine-tuned from the original weights, as if it were alone (with crop=True,
    each on the box around its own mask)."""
    original, edited, latents, mask = scene
    flipped = edited.flip(-1)
    flipped_latents = latents.flip(-1)
    masks = torch.cat([mask, mask.flip(-1)])
    kwargs = dict(vae=vae, steps=8, lr=1e-3, crop=crop, crop_margin=CROP_MARGIN)
    batch = reconstruct_background("decoder", original, torch.cat([edited, flipped]), masks,
                                   latents=torch.cat([latents, flipped_latents]), **kwargs)
    first = reconstruct_background("decoder", original, edited, mask, latents=latents, **kwargs)
    second = reconstruct_background("decoder", original, flipped, masks[1:], latents=flipped_latents, **kwargs)
    assert torch.equal(batch[:1], first) and torch.equal(batch[1:], second)  # bitwise on this CPU


@pytest.mark.parametrize("method", ["latent", "decoder"])
def test_empty_mask_with_crop_returns_the_original(vae, scene, method):
    original, edited, latents, _ = scene
    empty = torch.zeros(1, 1, SIZE, SIZE)
    result = reconstruct_background(method, original, edited, empty, vae=vae, latents=latents, steps=2, crop=True)
    assert torch.equal(result, original)


def test_progress_bar(vae, scene, capsys):
    original, edited, latents, mask = scene
    reconstruct_background("decoder", original, edited, mask, vae=vae, latents=latents, steps=2, progress=True)
    assert "decoder reconstruction" in capsys.readouterr().err


# --- PIL convenience -----------------------------------------------------------------------------------

def to_pil(image: torch.Tensor) -> PIL.Image.Image:
    return PIL.Image.fromarray(((image[0].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy())


def test_reconstruct_images_pixel_and_decoder_with_a_size_off_the_vae_factor(vae, scene):
    original, edited, _, mask = scene
    crop = (slice(None), slice(None), slice(0, 63), slice(0, 61))  # 61x63: odd, padded internally
    image, mask_image = to_pil(original[crop]), PIL.Image.fromarray((mask[crop][0, 0] * 255).byte().numpy())
    edits = [to_pil(edited[crop]), to_pil(edited[crop].flip(-2))]
    out = reconstruct_images("pixel", image, edits, mask_image)
    keep = np.asarray(mask_image) == 0
    assert [im.size for im in out] == [(61, 63)] * 2
    assert np.array_equal(np.asarray(out[0])[keep], np.asarray(image)[keep])
    out = reconstruct_images("decoder", image, edits[:1], mask_image, vae=vae, steps=10)
    assert out[0].size == (61, 63) and out[0].mode == "RGB"
    as_tensor = lambda im: torch.from_numpy(np.asarray(im, np.float32)).permute(2, 0, 1)[None] / 127.5 - 1  # noqa: E731
    where = torch.from_numpy(keep)[None, None]
    gain = psnr(as_tensor(out[0]), as_tensor(image), where) - psnr(as_tensor(edits[0]), as_tensor(image), where)
    assert gain > 3  # 4.7 dB measured
    with pytest.raises(ValueError, match="same size"):
        reconstruct_images("pixel", image, [edits[0].resize((64, 64))], mask_image)


# --- latent and decoder where users run them: inference mode, offloading, float16, large areas ----------

@pytest.mark.parametrize("method, kwargs", [("latent", dict(steps=5, lr=0.03)), ("decoder", dict(steps=5))])
def test_latent_and_decoder_work_inside_inference_mode(vae, scene, method, kwargs):
    original, edited, latents, mask = scene
    with torch.no_grad():
        expected = reconstruct_background(method, original, edited, mask, vae=vae, latents=latents, **kwargs)
    with torch.inference_mode():
        inputs = [t.clone() for t in (original, edited, latents, mask)]  # inference tensors
        before = snapshot(vae)
        result = reconstruct_background(method, inputs[0], inputs[1], inputs[3], vae=vae, latents=inputs[2],
                                        **kwargs)
    assert torch.allclose(result, expected, atol=1e-6)
    assert_unchanged(vae, before)


def test_vae_device_follows_an_offload_hook(vae):
    from types import SimpleNamespace

    from bld.ops.reconstruction import vae_device

    assert vae_device(vae) == torch.device("cpu")
    vae._hf_hook = SimpleNamespace(execution_device="cuda:1")  # what enable_model_cpu_offload leaves
    try:
        assert vae_device(vae) == torch.device("cuda:1")
    finally:
        del vae._hf_hook


def test_decoder_runs_through_an_accelerate_offload_hook(vae, scene):
    """The VAE's encode/decode trigger accelerate's hook (diffusers' apply_forward_hook), as with offloading."""
    from accelerate.hooks import CpuOffload, add_hook_to_module, remove_hook_from_module

    original, edited, latents, mask = scene
    expected = reconstruct_background("decoder", original, edited, mask, vae=vae, steps=5)
    before = snapshot(vae)
    add_hook_to_module(vae, CpuOffload(execution_device="cpu"))
    try:
        result = reconstruct_background("decoder", original, edited, mask, vae=vae, steps=5)
    finally:
        remove_hook_from_module(vae)
    assert torch.allclose(result, expected, atol=1e-6)
    assert_unchanged(vae, before)


def test_float16_vae_that_asks_for_upcasting_encodes_in_float32(vae, scene):
    from bld.ops.reconstruction import encode_mean

    original, edited, _, mask = scene
    half = AutoencoderKL.from_config({**vae.config, "force_upcast": True})
    half.load_state_dict(vae.state_dict())
    half.half().eval()
    before = snapshot(half)
    seen = []
    hook = half.encoder.conv_in.register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    try:
        z = encode_mean(half, edited.half())
    finally:
        hook.remove()
    assert seen == [torch.float32] and z.dtype == torch.float32 and torch.isfinite(z).all()
    assert torch.allclose(z, encode_mean(vae, edited), atol=1e-2)  # the float32 VAE's, from float16 weights
    assert_unchanged(half, before)
    result = reconstruct_images("decoder", *(PIL.Image.fromarray(_uint8(t)) for t in (original, edited)),
                                PIL.Image.fromarray((mask[0, 0].numpy() * 255).astype(np.uint8)), vae=half, steps=3)
    assert np.isfinite(np.asarray(result[0], dtype=np.float32)).all()
    assert_unchanged(half, before)


def _uint8(image: torch.Tensor) -> np.ndarray:
    return ((image[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()


def test_a_large_area_is_optimized_with_recomputed_activations(vae, scene, monkeypatch, caplog):
    """Above CHECKPOINT_ABOVE_PIXELS the decoder's activations are recomputed: the same result, and said."""
    import bld.ops.reconstruction as reconstruction

    original, edited, latents, mask = scene
    expected = reconstruct_background("decoder", original, edited, mask, vae=vae, latents=latents, steps=5)
    calls = []
    real = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(reconstruction, "CHECKPOINT_ABOVE_PIXELS", SIZE * SIZE - 1)
    with caplog.at_level("INFO", logger="bld"):
        result = reconstruct_background("decoder", original, edited, mask, vae=vae, latents=latents, steps=5)
    assert calls, "gradient checkpointing was not used"
    assert torch.allclose(result, expected, atol=1e-5)
    assert not vae.is_gradient_checkpointing
    assert "recomputing the decoder's activations" in caplog.text and f"{SIZE}x{SIZE}" in caplog.text


@pytest.mark.gpu
def test_decoder_reconstruction_with_model_cpu_offload():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from bld import BlendedLatentDiffusionPipeline
    from bld.testing.tiny_models import tiny_sd_components

    pipe = BlendedLatentDiffusionPipeline(**tiny_sd_components())
    pipe.enable_model_cpu_offload()
    image = PIL.Image.new("RGB", (64, 64), (120, 80, 40))
    mask = PIL.Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    out = pipe("a red star", image, mask, num_inference_steps=4, num_images_per_prompt=1,
               reconstruction="decoder", reconstruction_steps=3, output_type="np")
    assert np.isfinite(out.images).all()
