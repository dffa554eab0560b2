"""SD3 and FLUX.1: the flow-matching loop against diffusers' own pipelines, an oracle, and loading by family.

The properties every family shares (source kept outside the mask, seeds, batches, regions) run on these
pipelines too, through conftest's `any_family`."""

import json
import subprocess
import sys

import numpy as np
import PIL.ImageFilter
import pytest
import torch
from conftest import gen, make_image, make_mask
from diffusers import FluxInpaintPipeline, FluxPipeline, StableDiffusion3InpaintPipeline, StableDiffusion3Pipeline
from diffusers.pipelines.flux import pipeline_flux_inpaint
from diffusers.pipelines.stable_diffusion_3 import pipeline_stable_diffusion_3_inpaint
from diffusers.utils.torch_utils import randn_tensor

from bld import BlendedLatentDiffusionFluxPipeline, BlendedLatentDiffusionSD3Pipeline
from bld.image_io import InputError
from bld.loading import load_pipeline, pipeline_class_for, pipeline_class_of
from bld.ops.blending import latent_mask
from bld.pipelines.schedulers import make_scheduler

LATENT = (1, 16, 32, 32)  # a 64 px image at the tiny VAE's factor 2


@pytest.fixture(params=["sd3", "flux"])
def flow_pipe(request, sd3_pipe, flux_pipe):
    return sd3_pipe if request.param == "sd3" else flux_pipe


def predictor(pipe, prompt: str, guidance: float):
    """The blended loop's predict_noise for one prompt, built as the pipeline's __call__ builds it."""
    if isinstance(pipe, BlendedLatentDiffusionSD3Pipeline):
        rows = [pipe.encode_prompt(prompt, None, None, device="cpu", do_classifier_free_guidance=guidance > 1)]
        return pipe.guided_noise_predictor(pipe.conditioning(rows, guidance > 1), pipe.transformer_call(), guidance)
    embeds, pooled, text_ids = pipe.encode_prompt(prompt, None, device="cpu")
    conditioning = pipe.conditioning([(embeds, pooled, None, None)], False)
    return pipe.guided_noise_predictor(conditioning, pipe.transformer_call(text_ids, guidance), 1.0)


@pytest.mark.parametrize("steps", [3, 6])
def test_with_nothing_kept_the_loop_is_diffusers_text_to_image(flow_pipe, steps):
    """A mask of ones and no skipping leave nothing to blend: the loop must then sample exactly as diffusers'
    own pipeline does from the same noise (schedule and its shift, guidance, packing, Euler steps)."""
    guidance = 4.0
    timesteps = flow_pipe.blended_timesteps(steps, 0.0, "cpu", latent_size=LATENT[-2:])
    z0, ones = torch.zeros(LATENT), torch.ones(1, 1, *LATENT[-2:])
    ours = flow_pipe.blended_denoise(z0, ones, timesteps, predictor(flow_pipe, "a red star", guidance), gen(3),
                                     fresh_noise=False)
    noise = randn_tensor(LATENT, generator=gen(3))
    if isinstance(flow_pipe, BlendedLatentDiffusionSD3Pipeline):
        reference = StableDiffusion3Pipeline(**flow_pipe.components)
        theirs = reference("a red star", height=64, width=64, num_inference_steps=steps, guidance_scale=guidance,
                           latents=noise, output_type="latent").images
    else:
        reference = FluxPipeline(**flow_pipe.components)
        packed = reference._pack_latents(noise, 1, 16, 32, 32)
        theirs = reference("a red star", height=64, width=64, num_inference_steps=steps, guidance_scale=guidance,
                           latents=packed, output_type="latent").images
        theirs = reference._unpack_latents(theirs, 64, 64, reference.vae_scale_factor)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def ours_and_diffusers_inpaint(pipe, image, mask, monkeypatch, steps: int, skip: float, guidance: float):
    """The edit's latents from `pipe` and from diffusers' inpaint pipeline of its family on the same modules,
    diffusers' VAE sampling replaced by the posterior mean bld takes, bld's latent mask set to diffusers'
    nearest-neighbour sampling ('top-left'); diffusers' strength is 1 - skip_fraction."""
    def posterior_mean(encoder_output, generator=None, sample_mode="sample"):
        return encoder_output.latent_dist.mode()

    sd3 = isinstance(pipe, BlendedLatentDiffusionSD3Pipeline)
    monkeypatch.setattr(pipeline_stable_diffusion_3_inpaint if sd3 else pipeline_flux_inpaint, "retrieve_latents",
                        posterior_mean)
    ours = pipe("a red star", image, mask, num_inference_steps=steps, skip_fraction=skip, guidance_scale=guidance,
                latent_mask_mode="top-left", crop="off", generator=gen(3), output_type="latent").images
    reference = (StableDiffusion3InpaintPipeline if sd3 else FluxInpaintPipeline)(**pipe.components)
    reference.set_progress_bar_config(disable=True)
    theirs = reference("a red star", image=image, mask_image=mask, height=64, width=64, strength=1 - skip,
                       num_inference_steps=steps, guidance_scale=guidance, generator=gen(3),
                       output_type="latent").images
    if not sd3:
        theirs = reference._unpack_latents(theirs, 64, 64, reference.vae_scale_factor)
    return ours, theirs


@pytest.mark.parametrize("steps,skip", [(4, 0.25), (8, 0.5)])
def test_the_edit_is_diffusers_inpaint_pipeline_where_the_two_should_agree(flow_pipe, image, mask, monkeypatch,
                                                                           steps, skip):
    """diffusers' SD3 / FLUX inpaint pipelines on a plain 16-channel transformer blend as Blended Latent
    Diffusion does (source at the next sigma outside the mask, the clean source after the last step, one
    fixed noise). The intended differences are made equal here: diffusers samples the VAE posterior
    (bld takes its mean, so that the kept background is deterministic) and maps the mask to latent cells by
    nearest-neighbour sampling (bld's latent_mask_mode 'top-left')."""
    guidance = 5.0 if isinstance(flow_pipe, BlendedLatentDiffusionSD3Pipeline) else 3.5
    ours, theirs = ours_and_diffusers_inpaint(flow_pipe, image, mask, monkeypatch, steps, skip, guidance)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_in_bfloat16_the_edit_is_bit_identical_to_diffusers_inpaint(family, tmp_path, image, mask, monkeypatch):
    """bfloat16, as these models run on GPUs: the same agreement, to the bit (rounding in the same order)."""
    from bld.testing.tiny_flow_models import tiny_flux_components, tiny_sd3_components

    cls = BlendedLatentDiffusionSD3Pipeline if family == "sd3" else BlendedLatentDiffusionFluxPipeline
    pipe = cls(**(tiny_sd3_components if family == "sd3" else tiny_flux_components)(tokenizer_dir=tmp_path))
    pipe = pipe.to(dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    ours, theirs = ours_and_diffusers_inpaint(pipe, image, mask, monkeypatch, 4, 0.25, 4.0)
    assert ours.dtype == theirs.dtype == torch.bfloat16 and torch.equal(ours, theirs)


def test_a_transformer_that_knows_the_answer_is_followed_exactly(flow_pipe):
    """An oracle velocity toward a known clean latent (eps - z* = (x - z*) / sigma) must end at z* inside the
    mask, however the schedule is shifted and skipped, and at the source outside it."""
    target, z0 = torch.randn(LATENT, generator=gen(1)), torch.randn(LATENT, generator=gen(2))
    mask = torch.zeros(1, 1, *LATENT[-2:])
    mask[..., 8:20, 4:24] = 1
    timesteps = flow_pipe.blended_timesteps(8, 0.25, "cpu", latent_size=LATENT[-2:])
    assert len(timesteps) == 6
    seen = []

    def oracle(latents, t):
        seen.append(float(t))
        return (latents - target) / (t / 1000)

    out = flow_pipe.blended_denoise(z0, mask, timesteps, oracle, gen(0), fresh_noise=True)
    inside = mask.bool().expand_as(out)
    torch.testing.assert_close(out[inside], target[inside], rtol=0, atol=1e-5)
    assert torch.equal(out[~inside], z0[~inside])
    assert seen == timesteps.tolist()


def test_the_noised_source_is_on_the_straight_path(flow_pipe):
    timesteps = flow_pipe.blended_timesteps(10, 0.5, "cpu", latent_size=LATENT[-2:])
    z0, noise = torch.randn(LATENT, generator=gen(1)), torch.randn(LATENT, generator=gen(2))
    sigma = float(flow_pipe.scheduler.sigmas[5])
    assert 0 < sigma < 1 and float(timesteps[0]) == pytest.approx(sigma * 1000)
    torch.testing.assert_close(flow_pipe.noised_source(z0, noise, timesteps, 0), (1 - sigma) * z0 + sigma * noise)


def test_flux_shifts_its_schedule_with_the_image_size(flux_pipe):
    small = flux_pipe.blended_timesteps(4, 0.0, "cpu", latent_size=(16, 16)).clone()
    large = flux_pipe.blended_timesteps(4, 0.0, "cpu", latent_size=(32, 32))
    assert small[0] == large[0] == 1000
    assert bool((large[1:] > small[1:]).all())  # more tokens: more of the schedule at high noise


def test_flux_distilled_guidance_is_an_input_not_a_second_pass(flux_pipe, image, mask):
    sizes = []
    handle = flux_pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: sizes.append(kwargs["guidance"]), with_kwargs=True)
    try:
        a = flux_pipe("a red star", image, mask, num_inference_steps=3, generator=gen(0), output_type="np",
                      guidance_scale=3.5).images
        b = flux_pipe("a red star", image, mask, num_inference_steps=3, generator=gen(0), output_type="np",
                      guidance_scale=1.0).images
    finally:
        handle.remove()
    assert [g.tolist() for g in sizes] == [[3.5]] * 3 + [[1.0]] * 3  # one pass per step (none skipped of 3)
    assert not np.allclose(a, b, atol=1e-4)
    with pytest.raises(ValueError, match="needs a negative prompt"):
        flux_pipe("a red star", image, mask, num_inference_steps=3, true_cfg_scale=2.0)
    guided = flux_pipe("a red star", image, mask, num_inference_steps=3, generator=gen(0), output_type="np",
                       true_cfg_scale=2.0, negative_prompt="blurry").images
    assert not np.allclose(guided, a, atol=1e-4)


def test_sizes_must_be_whole_tokens(flow_pipe, image, mask):
    assert flow_pipe.size_multiple == 2 * flow_pipe.vae_scale_factor
    with pytest.raises(ValueError, match="multiple of 4"):
        flow_pipe("a red star", image, mask, num_inference_steps=2, height=66, width=64)
    out = flow_pipe("a red star", make_image((70, 50)), make_mask((70, 50), (10, 10, 40, 30)), num_inference_steps=2,
                    generator=gen(0), crop="off", output_type="latent").images
    assert out.shape[-2:] == (24, 36)  # 48 x 72 px: snapped to whole 2x2-cell tokens


def test_flow_models_sample_with_their_own_euler(flow_pipe):
    scheduler = flow_pipe.scheduler
    assert make_scheduler("ddim", scheduler) is scheduler and make_scheduler("euler", scheduler) is scheduler
    with pytest.raises(ValueError, match="flow-matching Euler: use ddim, euler or model"):
        make_scheduler("dpm++", scheduler)


def test_the_family_comes_from_model_index_json(tmp_path, sd3_pipe, flux_pipe):
    assert pipeline_class_of({"_class_name": "StableDiffusion3Pipeline", "transformer": ["diffusers", "x"]}) is (
        BlendedLatentDiffusionSD3Pipeline)
    assert pipeline_class_of({"_class_name": "FluxPipeline"}) is BlendedLatentDiffusionFluxPipeline
    with pytest.raises(InputError, match="transformer of class PixArtTransformer2DModel"):
        pipeline_class_of({"_class_name": "PixArtSigmaPipeline",
                           "transformer": ["diffusers", "PixArtTransformer2DModel"]})
    for pipe, cls in ((sd3_pipe, BlendedLatentDiffusionSD3Pipeline), (flux_pipe, BlendedLatentDiffusionFluxPipeline)):
        folder = tmp_path / cls.__name__
        pipe.save_pretrained(folder)
        assert pipeline_class_for(str(folder)) is cls
        loaded = load_pipeline(str(folder), device="cpu", scheduler="ddim")
        public = {k: v for k, v in loaded.scheduler.config.items() if not k.startswith("_")}
        assert type(loaded) is cls and public == {k: v for k, v in pipe.scheduler.config.items()
                                                  if not k.startswith("_")}


def test_bld_edit_runs_a_saved_flux_folder_and_refuses_a_noise_sampler(tmp_path, flux_pipe, monkeypatch, capsys):
    from bld.apps.cli import main

    flux_pipe.save_pretrained(tmp_path / "flux")
    make_image().save(tmp_path / "image.png")
    make_mask().save(tmp_path / "mask.png")
    command = ["edit", "image.png", "mask.png", "a red star", "--model", "flux", "--steps", "3", "--num-results", "2",
               "--seed", "4", "--device", "cpu", "--json"]
    done = subprocess.run([sys.executable, "-m", "bld", *command, "-o", "out.png"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    outputs = json.loads(done.stdout)["outputs"]
    assert len(outputs) == 2 and all((tmp_path / o["path"]).is_file() for o in outputs)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main([*command, "-o", "other.png", "--scheduler", "dpm++"]) != 0
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("bld: error:")]
    assert len(errors) == 1 and "flow-matching Euler" in errors[0] and not (tmp_path / "other.png").exists()


def test_two_regions_in_one_flow_edit(flow_pipe, image):
    """Outside both regions the source; the second region changes the edit (its own prompt's cells)."""
    masks = [make_mask(box=(0, 0, 24, 24)), make_mask(box=(40, 40, 64, 64))]
    latents = flow_pipe("a red star", image, masks[0], num_inference_steps=3, generator=gen(0), output_type="latent",
                        regions=["a blue moon"], region_masks=masks[1:], crop="off").images
    prepared = flow_pipe.prepare_image_and_mask(image, masks[0], None, None, False)
    z0 = flow_pipe.encode_source(prepared.image)
    cells = [latent_mask(flow_pipe.prepare_image_and_mask(image, m, None, None, False).mask, (32, 32), "any")
             for m in masks]
    outside = ~(cells[0].bool() | cells[1].bool()).expand_as(latents)
    assert torch.equal(latents[outside], z0[outside])
    one = flow_pipe("a red star", image, masks[0], num_inference_steps=3, generator=gen(0),
                    output_type="latent", crop="off").images
    assert not torch.allclose(latents, one, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_the_real_architectures_at_reduced_depth(family, tmp_path):
    """SD3-medium and FLUX.1-dev at their real widths (1 or 2 blocks): real channel counts, patching,
    packing, rotary axes and VAE factor 8 go through one 128 px edit; the source stays outside the mask."""
    from bld.testing.reference_flow_architectures import flux_dev_components, sd3_medium_components

    if family == "sd3":
        pipe = BlendedLatentDiffusionSD3Pipeline(**sd3_medium_components(layers=1, text_layers=1,
                                                                          tokenizer_dir=tmp_path))
    else:
        pipe = BlendedLatentDiffusionFluxPipeline(**flux_dev_components(tokenizer_dir=tmp_path))
    pipe.set_progress_bar_config(disable=True)
    assert (pipe.native_size, pipe.size_multiple, pipe.vae_scale_factor) == (1024, 16, 8)
    image, mask = make_image((128, 128)), make_mask((128, 128), (32, 32, 96, 80))
    latents = pipe("a red car", image, mask, num_inference_steps=2, skip_fraction=0.5, crop="off",
                   generator=gen(0), output_type="latent", max_sequence_length=32).images
    assert latents.shape == (1, 16, 16, 16) and torch.isfinite(latents).all()
    prepared = pipe.prepare_image_and_mask(image, mask, None, None, False)
    outside = latent_mask(prepared.mask, (16, 16), "any").expand_as(latents) == 0
    assert torch.equal(latents[outside], pipe.encode_source(prepared.image)[outside])


@pytest.mark.parametrize("reconstruction", ["pixel", "poisson", "latent", "decoder"])
def test_every_reconstruction_and_ranking_on_the_16_channel_vae(flow_pipe, image, mask, tmp_path, reconstruction):
    from bld.editing import run_edit
    from bld.params import EditParams
    from bld.testing.tiny_clip import tiny_clip

    params = EditParams(prompt="a red star", num_inference_steps=3, num_images=2, seed=1,
                        reconstruction=reconstruction, reconstruction_steps=2, soft_mask=True, mask_blur=3)
    results = run_edit(flow_pipe, image, mask, params, tiny_clip(tmp_path / "clip"))
    assert [r.score for r in results] == sorted((r.score for r in results), reverse=True)
    far = np.asarray(mask.filter(PIL.ImageFilter.MaxFilter(9))) == 0  # beyond the blur: the input's pixels
    for result in results:
        assert np.array_equal(np.asarray(result.image)[far], np.asarray(image)[far])
        assert result.metrics["background_psnr"] > 20


def test_the_web_app_edits_with_a_flow_model(flux_pipe, tmp_path):
    from bld.apps.webapp import WebEditor, editor_value

    editor = WebEditor(flux_pipe, None, model="tiny-flux", results_dir=tmp_path / "results")
    image, mask = make_image(), make_mask()
    layer = np.zeros((64, 64, 4), np.uint8)
    layer[np.asarray(mask) >= 128] = (255, 0, 255, 153)
    outcome = editor.edit(image, editor_value(image, layer), "a red apple", "",
                          {"num_inference_steps": 3.0, "num_images": 1.0, "seed": "2"})
    assert outcome.ok, outcome.message
    (path, _), = outcome.gallery
    result, source = np.asarray(PIL.Image.open(path).convert("RGB")), np.asarray(image)
    outside = np.asarray(mask) < 128
    assert np.array_equal(result[outside], source[outside])
    assert editor.pipe.scheduler is editor.base_scheduler
