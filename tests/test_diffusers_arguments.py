"""What diffusers users pass to a pipeline, with diffusers' meaning, on the SD and SDXL pipelines."""

import pytest
import torch
from conftest import gen, make_image, make_mask
from diffusers.callbacks import SDCFGCutoffCallback, SDXLCFGCutoffCallback
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

from bld import BlendedLatentDiffusionXLPipeline

STEPS = 6


def edit(pipe, **kwargs):
    kwargs = {"num_inference_steps": STEPS, "generator": gen(0), "output_type": "latent", **kwargs}
    return pipe(image=make_image(), mask_image=make_mask(), **kwargs).images


def embeddings(pipe, prompt, negative):
    """(prompt_embeds, negative_prompt_embeds, extra kwargs) as the pipeline's own encoder makes them."""
    if isinstance(pipe, BlendedLatentDiffusionXLPipeline):
        embeds, negative_embeds, pooled, negative_pooled = pipe.encode_prompt(
            prompt, None, pipe.device, 1, True, negative)
        return embeds, negative_embeds, {"pooled_prompt_embeds": pooled, "negative_pooled_prompt_embeds":
                                         negative_pooled}
    embeds, negative_embeds = pipe.encode_prompt(prompt, pipe.device, 1, True, negative)
    return embeds, negative_embeds, {}


def test_one_result_by_default_as_in_diffusers(pipe):
    assert edit(pipe, prompt="a red star", generator=[gen(0)]).shape[0] == 1


def test_prompt_embeds_give_the_prompts_result(pipe):
    expected = edit(pipe, prompt="a red star", negative_prompt="blue", guidance_scale=7.5)
    embeds, negative, extra = embeddings(pipe, "a red star", "blue")
    got = edit(pipe, prompt_embeds=embeds, negative_prompt_embeds=negative, guidance_scale=7.5, **extra)
    assert torch.allclose(got, expected, atol=1e-6)


def test_prompt_and_prompt_embeds_together_are_refused(sd_pipe):
    embeds, _, _ = embeddings(sd_pipe, "a red star", None)
    with pytest.raises(ValueError, match="not both"):
        edit(sd_pipe, prompt="a red star", prompt_embeds=embeds)


def test_ranking_needs_the_prompt_text(sd_pipe):
    embeds, _, _ = embeddings(sd_pipe, "a red star", None)
    with pytest.raises(ValueError, match="ranking scores the results against one prompt's text"):
        edit(sd_pipe, prompt_embeds=embeds, scorer=object(), output_type="pil")


def test_cross_attention_kwargs_reach_the_unet_and_the_lora_scale_the_text_encoder(pipe, monkeypatch):
    seen_unet, seen_scale = [], []
    unet_forward, encode = pipe.unet.forward, pipe.encode_prompt

    def recording_forward(*args, **kwargs):
        seen_unet.append(kwargs.get("cross_attention_kwargs"))
        return unet_forward(*args, **kwargs)

    def recording_encode(*args, **kwargs):
        seen_scale.append(kwargs.pop("lora_scale"))  # scaling LoRA layers is diffusers' part, and there is none
        return encode(*args, **kwargs)

    monkeypatch.setattr(pipe.unet, "forward", recording_forward)
    monkeypatch.setattr(pipe, "encode_prompt", recording_encode)
    edit(pipe, prompt="a red star", cross_attention_kwargs={"scale": 0.5})
    assert seen_unet and all(k == {"scale": 0.5} for k in seen_unet)
    assert seen_scale == [0.5]


def test_eta_adds_ddim_noise_inside_the_mask_only(sd_pipe):
    plain = edit(sd_pipe, prompt="a red star", generator=[gen(1)])
    noisy = edit(sd_pipe, prompt="a red star", generator=[gen(1)], eta=1.0)
    again = edit(sd_pipe, prompt="a red star", generator=[gen(1)], eta=1.0)
    assert torch.equal(noisy, again)
    changed = (noisy - plain).abs().sum(dim=1) > 0
    prepared = sd_pipe.prepare_image_and_mask(make_image(), make_mask(), None, None, False)
    z0 = sd_pipe.encode_source(prepared.image)
    outside = (noisy - z0).abs().sum(dim=1) == 0
    assert changed.any() and not (changed & outside).any()


def test_guidance_rescale_follows_diffusers_formula(sd_pipe):
    uncond, cond = torch.randn(2, 4, 8, 8, generator=gen(2)).chunk(2)

    def unet_call(model_input, t, conditioning):
        return torch.cat([uncond, cond * 3.0])  # any two different predictions

    sd_pipe.scheduler.set_timesteps(10)
    predict = sd_pipe.guided_noise_predictor({"prompt_embeds": torch.zeros(2, 3, 4)}, unet_call, 7.5, 0.7)
    guided = uncond + 7.5 * (cond * 3.0 - uncond)
    expected = rescale_noise_cfg(guided, cond * 3.0, guidance_rescale=0.7)
    assert torch.allclose(predict(torch.zeros(1, 4, 8, 8), sd_pipe.scheduler.timesteps[0]), expected)
    assert not torch.allclose(expected, guided)


def test_callback_sees_the_tensors_it_asks_for_and_unknown_names_are_refused(sd_pipe):
    seen = []

    def callback(pipe, i, t, state):
        seen.append(sorted(state))
        return {}

    edit(sd_pipe, prompt="a red star", callback_on_step_end=callback,
         callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"])
    assert seen and all(keys == ["latents", "mask", "prompt_embeds"] for keys in seen)
    with pytest.raises(ValueError, match=r"\['text_embeds'\] are not among"):
        edit(sd_pipe, prompt="a red star", callback_on_step_end=callback,
             callback_on_step_end_tensor_inputs=["text_embeds"])


@pytest.mark.parametrize("num_images", [1, 3])
def test_diffusers_cfg_cutoff_callback_halves_the_unet_batch(pipe, monkeypatch, num_images):
    batches, forward = [], pipe.unet.forward

    def recording_forward(sample, *args, **kwargs):
        batches.append(sample.shape[0])
        return forward(sample, *args, **kwargs)

    monkeypatch.setattr(pipe.unet, "forward", recording_forward)
    cutoff = (SDXLCFGCutoffCallback if isinstance(pipe, BlendedLatentDiffusionXLPipeline) else SDCFGCutoffCallback)(
        cutoff_step_ratio=0.5)
    latents = edit(pipe, prompt="a red star", guidance_scale=7.5, num_images_per_prompt=num_images,
                   generator=[gen(k) for k in range(num_images)], skip_fraction=0.0, callback_on_step_end=cutoff)
    assert latents.shape[0] == num_images and torch.isfinite(latents).all()
    assert batches == [2 * num_images] * (STEPS // 2 + 1) + [num_images] * (STEPS - STEPS // 2 - 1)


def test_guidance_cutoff_is_diffusers_cfg_cutoff(pipe):
    """guidance_cutoff=0.5 over 6 kept steps guides 3 of them: diffusers' callback with cutoff_step_index=2
    (it turns guidance off after that step) gives the same latents."""
    callback_cls = SDXLCFGCutoffCallback if isinstance(pipe, BlendedLatentDiffusionXLPipeline) else SDCFGCutoffCallback
    common = dict(prompt="a red star", guidance_scale=7.5, skip_fraction=0.0)
    ours = edit(pipe, guidance_cutoff=0.5, **common)
    theirs = edit(pipe, callback_on_step_end=callback_cls(cutoff_step_ratio=None, cutoff_step_index=2), **common)
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert not torch.allclose(ours, edit(pipe, **common), atol=1e-4)
    assert torch.equal(edit(pipe, guidance_cutoff=1.0, **common), edit(pipe, **common))


def test_speed_up_options(tmp_path):
    """channels-last gives the same edit (up to rounding); compile wraps the UNet once."""
    from bld.loading import load_pipeline, speed_up

    pipe = load_pipeline("tiny-random", device="cpu", dtype="float32")
    pipe.set_progress_bar_config(disable=True)
    expected = edit(pipe, prompt="a red star")
    speed_up(pipe, channels_last=True)
    conv = pipe.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert torch.allclose(edit(pipe, prompt="a red star"), expected, atol=1e-4)
    speed_up(pipe, compile=True)
    compiled = pipe.unet
    assert isinstance(compiled, torch._dynamo.eval_frame.OptimizedModule)
    assert speed_up(pipe, compile=True).unet is compiled
