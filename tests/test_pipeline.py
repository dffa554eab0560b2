"""What the method guarantees, checked on tiny SD, SDXL, LDM, SD3 and FLUX pipelines (2 to 4 steps, 64 px, CPU)."""

import numpy as np
import pytest
import torch
from conftest import SIZE, gen, make_image, make_mask
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
)

from bld import BlendedLatentDiffusionFluxPipeline
from bld.ops.blending import latent_mask

STEPS = 4  # skip_fraction 0.25 -> 3 blended steps


@pytest.fixture
def pipe(any_family):
    """Here `pipe` is every family's: SD, SDXL, the paper's LDM, SD3 and FLUX.1."""
    return any_family


def edit(pipe, image, mask, **kwargs):
    kwargs = {"num_inference_steps": STEPS, "num_images_per_prompt": 1, "generator": gen(0), **kwargs}
    return pipe("a red star", image, mask, **kwargs).images


def source_and_mask(pipe, image, mask, invert=False):
    prepared = pipe.prepare_image_and_mask(image, mask, None, None, invert)
    z0 = pipe.encode_source(prepared.image)
    return z0, latent_mask(prepared.mask, tuple(z0.shape[-2:]), "any")


@pytest.mark.parametrize("scheduler_cls", [DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler,
                                           EulerAncestralDiscreteScheduler, HeunDiscreteScheduler])
@pytest.mark.parametrize("background_noise", ["fixed", "fresh"])
def test_outside_the_mask_the_final_latent_is_the_source_latent(sd_pipe, image, mask, scheduler_cls,
                                                                 background_noise):
    original = sd_pipe.scheduler
    sd_pipe.scheduler = scheduler_cls.from_config(original.config)
    try:
        latents = edit(sd_pipe, image, mask, output_type="latent", background_noise=background_noise,
                       num_images_per_prompt=2)
    finally:
        sd_pipe.scheduler = original
    z0, m = source_and_mask(sd_pipe, image, mask)
    outside = (m == 0).expand_as(latents)
    assert torch.equal(latents[outside], z0.expand_as(latents)[outside])
    assert not torch.allclose(latents[~outside], z0.expand_as(latents)[~outside], atol=1e-3)


def test_sdxl_keeps_the_source_latent_outside_the_mask(sdxl_pipe, image, mask):
    latents = edit(sdxl_pipe, image, mask, output_type="latent")
    z0, m = source_and_mask(sdxl_pipe, image, mask)
    outside = (m == 0).expand_as(latents)
    assert torch.equal(latents[outside], z0[outside])


def test_inverted_mask_keeps_the_inside(pipe, image, mask):
    latents = edit(pipe, image, mask, output_type="latent", invert_mask=True)
    z0, m = source_and_mask(pipe, image, mask, invert=True)
    kept = (m == 0).expand_as(latents)
    assert kept.any() and torch.equal(latents[kept], z0[kept])
    # the kept region is the original mask's inside
    _, original = source_and_mask(pipe, image, mask)
    assert torch.equal(kept[:, :1], original.bool())


def test_same_seed_same_result_other_seed_other_result(pipe, image, mask):
    a = np.asarray(edit(pipe, image, mask, generator=gen(1))[0])
    b = np.asarray(edit(pipe, image, mask, generator=gen(1))[0])
    c = np.asarray(edit(pipe, image, mask, generator=gen(2))[0])
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("background_noise", ["fixed", "fresh"])
def test_a_batch_of_three_equals_three_single_runs(pipe, image, mask, background_noise):
    batch = edit(pipe, image, mask, output_type="np", num_images_per_prompt=3, background_noise=background_noise,
                 generator=[gen(s) for s in (5, 6, 7)])
    singles = [edit(pipe, image, mask, output_type="np", background_noise=background_noise,
                    generator=gen(s))[0] for s in (5, 6, 7)]
    assert batch.shape == (3, SIZE, SIZE, 3)
    for got, single in zip(batch, singles):
        np.testing.assert_allclose(got, single, atol=1e-4)
    assert not np.allclose(batch[0], batch[1], atol=1e-3)


def count_unet_batches(pipe):
    sizes = []
    handle = pipe.denoiser.register_forward_pre_hook(
        lambda module, args, kwargs: sizes.append((args[0] if args else kwargs["hidden_states"]).shape[0]),
        with_kwargs=True)
    return sizes, handle


@pytest.mark.parametrize("guidance,expected_batch", [(1.0, 2), (0.0, 2), (7.5, 4)])
def test_guidance_one_or_less_skips_the_unconditional_pass(pipe, image, mask, guidance, expected_batch):
    if isinstance(pipe, BlendedLatentDiffusionFluxPipeline):
        expected_batch = 2  # FLUX.1's guidance is an input of its one pass (true CFG: tests/test_flow_matching.py)
    sizes, handle = count_unet_batches(pipe)
    try:
        edit(pipe, image, mask, guidance_scale=guidance, num_images_per_prompt=2)
    finally:
        handle.remove()
    assert sizes == [expected_batch] * 3


def test_the_loop_runs_the_kept_part_of_the_schedule(sd_pipe, image, mask):
    seen = []
    edit(sd_pipe, image, mask, num_inference_steps=20, skip_fraction=0.25,
         callback_on_step_end=lambda p, i, t, kw: seen.append(int(t)) or {})
    assert len(seen) == 15
    sd_pipe.scheduler.set_timesteps(20)
    assert seen == sd_pipe.scheduler.timesteps[5:].tolist()


def test_blending_starts_from_the_noised_source(sd_pipe, image, mask):
    """With most of the schedule skipped the start is barely noised, so the edit stays near the source:
    this is what scribble-guided editing relies on. From (almost) pure noise it does not."""
    z0, m = source_and_mask(sd_pipe, image, mask)
    inside = m.bool().expand_as(z0)

    def distance(skip):
        latents = edit(sd_pipe, image, mask, output_type="latent", num_inference_steps=50, skip_fraction=skip)
        return (latents - z0)[inside].abs().mean().item()

    assert distance(0.96) < 0.1 * distance(0.0)


def test_callback_can_stop_the_edit(sd_pipe, image, mask):
    seen = []

    def stop_after_first(pipe, i, t, kwargs):
        seen.append(i)
        pipe.interrupt_edit()
        return {}

    edit(sd_pipe, image, mask, num_inference_steps=10, callback_on_step_end=stop_after_first)
    assert seen == [0]


@pytest.mark.parametrize("output_type,check", [
    ("pil", lambda out: out[0].size == (SIZE, SIZE) and out[0].mode == "RGB"),
    ("np", lambda out: out.shape == (2, SIZE, SIZE, 3) and 0 <= out.min() and out.max() <= 1),
    ("pt", lambda out: tuple(out.shape) == (2, 3, SIZE, SIZE)),
    ("latent", lambda out: out.shape[0] == 2 and out.shape[2:] == (SIZE // 2, SIZE // 2)),
])
def test_output_types(pipe, image, mask, output_type, check):
    out = edit(pipe, image, mask, output_type=output_type, num_images_per_prompt=2)
    assert check(out)
    if output_type == "latent":  # spatial latents with the VAE's channels (16 for SD3 and FLUX), never packed
        assert out.shape[1] == pipe.vae.config.latent_channels


def test_a_list_of_prompts_gives_results_per_prompt(sd_pipe, image, mask):
    out = sd_pipe(["a red star", "a blue circle"], image, mask, num_inference_steps=STEPS,
                  num_images_per_prompt=2, generator=gen(0), output_type="np").images
    assert out.shape[0] == 4


def test_odd_sizes_are_snapped_for_the_model_and_restored(sd_pipe):
    image, mask = make_image((67, 45)), make_mask((67, 45), box=(10, 10, 40, 30))
    prepared = sd_pipe.prepare_image_and_mask(image, mask, None, None, False)
    assert (prepared.width, prepared.height) == (68, 44)
    assert edit(sd_pipe, image, mask)[0].size == (67, 45)


def test_explicit_size_is_used(sd_pipe, image, mask):
    latents = edit(sd_pipe, image, mask, output_type="latent", height=48, width=96)
    assert latents.shape[-2:] == (24, 48)


def test_mask_with_same_aspect_but_other_size_is_resized(sd_pipe, image):
    small_mask = make_mask((32, 32), box=(8, 8, 20, 24))
    assert edit(sd_pipe, image, small_mask)[0].size == (SIZE, SIZE)


def test_soft_mask_is_thresholded_at_half(sd_pipe, image):
    soft = np.zeros((SIZE, SIZE), np.float32)
    soft[:, 32:] = 0.6   # edited
    soft[:, 16:32] = 0.4  # kept
    prepared = sd_pipe.prepare_image_and_mask(image, soft, None, None, False)
    assert prepared.mask[0, 0, :, 32:].eq(1).all() and prepared.mask[0, 0, :, :32].eq(0).all()


def test_a_thin_mask_survives_in_any_mode_and_is_refused_in_nearest(sd_pipe, image):
    thin = np.zeros((SIZE, SIZE), np.uint8)
    thin[10:50, 20] = 255  # one pixel wide, between nearest's samples (the cell centers: odd columns at factor 2)
    latents = edit(sd_pipe, image, thin, output_type="latent")
    assert latents.shape[0] == 1
    with pytest.raises(ValueError, match="mask vanishes at the latent resolution.*use latent_mask_mode='any'"):
        edit(sd_pipe, image, thin, latent_mask_mode="nearest")


def test_inside_mode_keeps_the_source_on_every_cell_the_mask_only_touches(sd_pipe, image):
    ragged = np.zeros((SIZE, SIZE), np.uint8)
    ragged[9:40, 13:50] = 255  # odd starts: at factor 2, the cells of row 4 and of column 6 are cut
    latents = edit(sd_pipe, image, ragged, output_type="latent", latent_mask_mode="inside")
    prepared = sd_pipe.prepare_image_and_mask(image, ragged, None, None, False)
    z0 = sd_pipe.encode_source(prepared.image)
    touched = latent_mask(prepared.mask, tuple(z0.shape[-2:]), "any").bool().expand_as(latents)
    whole = latent_mask(prepared.mask, tuple(z0.shape[-2:]), "inside").bool().expand_as(latents)
    cut = touched & ~whole
    assert cut.any() and torch.equal(latents[cut], z0[cut])
    assert torch.equal(latents[~touched], z0[~touched])
    assert not torch.allclose(latents[whole], z0[whole], atol=1e-3)
    thin = np.zeros((SIZE, SIZE), np.uint8)
    thin[10:50, 21] = 255  # covers no cell whole: edited in the cells it touches, as in 'any'
    z_thin = edit(sd_pipe, image, thin, output_type="latent", latent_mask_mode="inside")
    assert torch.equal(z_thin, edit(sd_pipe, image, thin, output_type="latent", latent_mask_mode="any"))


def test_ranking_sorts_best_first_and_reports_the_batch_order(sd_pipe, image, mask, tmp_path):
    from bld.testing.tiny_clip import tiny_clip

    scorer = tiny_clip(tmp_path / "clip")
    ranked = sd_pipe("a red star", image, mask, num_inference_steps=STEPS, num_images_per_prompt=3,
                     generator=[gen(s) for s in (1, 2, 3)], scorer=scorer, output_type="np")
    plain = edit(sd_pipe, image, mask, num_images_per_prompt=3, generator=[gen(s) for s in (1, 2, 3)],
                 output_type="np")
    assert ranked.scores == sorted(ranked.scores, reverse=True)
    assert sorted(ranked.order) == [0, 1, 2]
    for k, source_index in enumerate(ranked.order):
        np.testing.assert_allclose(ranked.images[k], plain[source_index], atol=1e-6)
    region = np.asarray(mask) >= 128
    rescored = scorer.score([plain[i] for i in ranked.order], "a red star", region)
    np.testing.assert_allclose(rescored, ranked.scores, atol=1e-5)


@pytest.mark.parametrize("method", ["pixel", "poisson", "latent", "decoder"])
def test_every_reconstruction_keeps_the_input_outside_the_mask(sd_pipe, image, mask, method):
    out = edit(sd_pipe, image, mask, output_type="np", reconstruction=method, reconstruction_steps=2)
    original = np.asarray(image, dtype=np.float32) / 255
    outside = np.asarray(mask) < 128
    assert np.abs(out[0] - original)[outside].max() < 1e-6  # the input's pixels (up to uint8 -> float)


@pytest.mark.parametrize("method", ["latent", "decoder"])
def test_the_raw_decoding_is_kept_when_asked(sd_pipe, image, mask, method):
    out = edit(sd_pipe, image, mask, output_type="np", reconstruction=method, reconstruction_steps=2,
               paste_outside=False)
    raw = edit(sd_pipe, image, mask, output_type="np", reconstruction="none")
    original = np.asarray(image, dtype=np.float32) / 255
    outside = np.asarray(mask) < 128
    error, raw_error = (np.abs(x[0] - original)[outside].mean() for x in (out, raw))
    assert 0 < error < raw_error


def test_a_downscaled_edit_leaves_the_rest_of_the_image_untouched(sd_pipe):
    """Edited at 32 px and resized back: outside the mask not one pixel of the 96 px input changes."""
    image, mask = make_image((96, 96), seed=3), make_mask((96, 96), box=(30, 30, 60, 66))
    out = sd_pipe("a red star", image, mask, num_inference_steps=STEPS, num_images_per_prompt=1, generator=gen(0),
                  width=32, reconstruction="decoder", reconstruction_steps=2).images[0]
    outside = np.asarray(mask) < 128
    assert np.array_equal(np.asarray(out)[outside], np.asarray(image)[outside])
    assert not np.array_equal(np.asarray(out)[~outside], np.asarray(image)[~outside])


def test_background_weight_reaches_the_reconstruction(sd_pipe, image, mask, monkeypatch):
    import bld.pipelines.blended

    seen = []
    real = bld.pipelines.blended.reconstruct_background
    monkeypatch.setattr(bld.pipelines.blended, "reconstruct_background",
                        lambda *a, **kw: (a[0] == "decoder" and seen.append(kw.get("background_weight")))
                        or real(*a, **kw))
    edit(sd_pipe, image, mask, reconstruction="decoder", reconstruction_steps=1, reconstruction_background_weight=7.0)
    edit(sd_pipe, image, mask, reconstruction="decoder", reconstruction_steps=1)
    assert seen == [7.0, 100.0]


def test_pixel_reconstruction_keeps_the_input_pixels_at_an_odd_size(sd_pipe):
    image, mask = make_image((67, 45)), make_mask((67, 45), box=(10, 10, 40, 30))
    out = np.asarray(edit(sd_pipe, image, mask, reconstruction="pixel")[0])
    outside = np.asarray(mask) < 128
    assert np.array_equal(out[outside], np.asarray(image)[outside])


@pytest.mark.parametrize("kwargs,message", [
    ({"output_type": "latent", "scorer": object()}, "ranking needs decoded images"),
    ({"output_type": "jpeg"}, "output_type='jpeg' is not one of pil, np, pt, latent"),
    ({"generator": [gen(0), gen(1)]}, "got 2 generators for 1 results"),
    ({"height": 61}, "height=61 must be a multiple of 2"),
    ({"reconstruction": "magic"}, "reconstruction='magic' is not one of none, pixel, poisson, latent, decoder"),
    ({"num_inference_steps": 0}, "num_inference_steps=0 is out of range"),
])
def test_bad_arguments_are_refused_before_any_work(sd_pipe, image, mask, kwargs, message):
    calls, handle = count_unet_batches(sd_pipe)
    try:
        with pytest.raises(ValueError, match=message):
            edit(sd_pipe, image, mask, **kwargs)
    finally:
        handle.remove()
    assert calls == []


def test_bad_mask_inputs(sd_pipe, image):
    with pytest.raises(ValueError, match="mask is 128x64 but image is 64x64: they must have the same aspect ratio"):
        edit(sd_pipe, image, make_mask((128, 64)))
    with pytest.raises(ValueError, match="mask is empty"):
        edit(sd_pipe, image, np.zeros((SIZE, SIZE), np.uint8))
    with pytest.raises(ValueError, match="mask covers the whole image"):
        edit(sd_pipe, image, np.ones((SIZE, SIZE), np.float32))
    with pytest.raises(ValueError, match="pass prompt .* or prompt_embeds"):
        sd_pipe(None, image, make_mask())
    with pytest.raises(ValueError, match="prompt must be a string"):
        sd_pipe(7, image, make_mask())
