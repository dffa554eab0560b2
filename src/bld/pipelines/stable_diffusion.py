"""Blended Latent Diffusion for Stable Diffusion 1.x / 2.x (Avrahami, Fried, Lischinski, SIGGRAPH 2023)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import PIL.Image
import torch
from diffusers import StableDiffusionPipeline

from ..params import DEFAULTS, Region
from .blended import BlendedLatentMixin, call_settings, callback_tensor_inputs, region_major

ImageInput = PIL.Image.Image | Any  # PIL image, (H, W, C) array in [0, 1] or uint8, (1, C, H, W) tensor in [0, 1]


class BlendedLatentDiffusionPipeline(BlendedLatentMixin, StableDiffusionPipeline):
    """Text-driven local editing with any Stable Diffusion 1.x / 2.x text-to-image checkpoint.

    Loads like any diffusers pipeline (`from_pretrained` of a hub id or a local folder) and takes the
    same components: vae, text_encoder, tokenizer, unet (a plain 4-channel text-to-image UNet),
    scheduler (any diffusers scheduler with `add_noise`), optional safety_checker and feature_extractor.
    """

    default_guidance_scale = 7.5
    _callback_tensor_inputs = ["latents", "prompt_embeds"]  # prompt_embeds: negative rows first when guided

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        image: ImageInput = None,
        mask_image: ImageInput = None,
        num_inference_steps: int = DEFAULTS.num_inference_steps,
        guidance_scale: float | None = None,
        skip_fraction: float = DEFAULTS.skip_fraction,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        invert_mask: bool = DEFAULTS.invert_mask,
        height: int | None = None,
        width: int | None = None,
        crop: str = DEFAULTS.crop,
        crop_padding: float = DEFAULTS.crop_padding,
        soft_mask: bool = DEFAULTS.soft_mask,
        mask_grow: int = DEFAULTS.mask_grow,
        mask_blur: float = DEFAULTS.mask_blur,
        latent_mask_mode: str = DEFAULTS.latent_mask_mode,
        mask_dilation_iterations: int = DEFAULTS.mask_dilation_iterations,
        background_noise: str = DEFAULTS.background_noise,
        reconstruction: str = DEFAULTS.reconstruction,
        feather: int = DEFAULTS.feather,
        reconstruction_steps: int = DEFAULTS.reconstruction_steps,
        reconstruction_background_weight: float = DEFAULTS.reconstruction_background_weight,
        reconstruction_crop: bool = DEFAULTS.reconstruction_crop,
        paste_outside: bool = DEFAULTS.paste_outside,
        scorer=None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        clip_skip: int | None = None,
        eta: float = 0.0,
        guidance_rescale: float = 0.0,
        guidance_cutoff: float = DEFAULTS.guidance_cutoff,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        regions: Sequence[Region | dict | str] = (),
        region_masks: Sequence[ImageInput] = (),
    ):
        """Edit the masked region of `image` to follow `prompt`; keep the rest.

        image: PIL image, array or tensor, of any size. crop: 'auto' (default) edits a box around each part
        of the mask, padded by `crop_padding` times the part's longer side, at a bucket of about the model's
        native area (or the whole image, at its bucket, when it is no larger than that or the boxes would
        cover most of it) and pastes the results into the input at full resolution: outside the boxes the
        pixels are the input's. 'off' edits the whole image at its size snapped to a multiple of the VAE
        factor (or at height x width). The results have the input's size. mask_image: same size (or aspect
        ratio), white = edit, gray thresholded at 0.5 unless soft_mask (gray = per-pixel strength: a pixel
        of strength s is edited in the last s of the kept steps and mixed into the input with alpha s);
        mask_grow / mask_blur: pixels at the input's size (a blurred edge is soft). skip_fraction: share of
        the schedule skipped before blending starts. latent_mask_mode: 'any' (keep every latent cell the mask
        touches), 'nearest' (each cell's center pixel, the paper's), 'inside' (cells the mask covers whole; a
        thin part on its own keeps the cells it touches) or 'top-left' (each cell's first pixel, diffusers'
        inpaint pipeline).
        mask_dilation_iterations: progressive shrinking for thin masks (0 = off).
        background_noise: 'fixed' (one noise, as diffusers) or 'fresh' (new noise every step).
        num_images_per_prompt: results per prompt (1, as diffusers; bld's CLI and web app ask for 4 to rank).
        generator: one, or one per result to make each result reproducible on its own.
        reconstruction: 'none', 'pixel' (with `feather`), 'poisson', 'latent' or 'decoder' (with
        `reconstruction_steps`, `reconstruction_background_weight`, `reconstruction_crop`, and
        `paste_outside`: the input's pixels put back outside the mask afterwards, feathered). scorer: a
        bld.ranking.ClipScorer to sort results best first. guidance_cutoff: the share of the kept steps
        that use guidance (1 = all); the rest make one UNet pass per result instead of two.
        As in diffusers: prompt_embeds / negative_prompt_embeds instead of the prompts, cross_attention_kwargs
        (e.g. {"scale": 0.7} for a LoRA), eta (DDIM), guidance_rescale, clip_skip, and callback_on_step_end
        (a function or a diffusers PipelineCallback such as SDCFGCutoffCallback) with
        callback_on_step_end_tensor_inputs among "latents", "prompt_embeds" and "mask".
        regions: more regions edited in the same pass (bld.Region: a prompt, optionally its own negative prompt
        and a strength), their masks in `region_masks`, one each; `prompt` and `mask_image` are the first
        region. Each latent cell follows its own region's prompt, where regions overlap the later one wins,
        and outside every region the result is the input (README, "Several regions").
        Returns BlendedLatentDiffusionPipelineOutput with `images` (PIL by default), and `scores` and
        `order` when ranked (with regions also `region_scores`, each result's score per region).
        """
        tensor_inputs = callback_tensor_inputs(callback_on_step_end, callback_on_step_end_tensor_inputs)
        params, guidance_scale, batch_size = self.resolve_settings(prompt, prompt_embeds, **call_settings(locals()))
        do_cfg = guidance_scale > 1.0
        device = self._execution_device

        # 1. Validate the inputs
        self.check_edit_inputs(prompt, image, mask_image, params, generator, batch_size, output_type, scorer,
                               prompt_embeds, negative_prompt_embeds, tensor_inputs)

        # 2. Encode the prompt (and the negative prompt for classifier-free guidance)
        lora_scale = (cross_attention_kwargs or {}).get("scale")
        prompt_embeds, negative_embeds = self.encode_prompt(
            prompt, device, num_images_per_prompt, do_cfg, negative_prompt, prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds, lora_scale=lora_scale, clip_skip=clip_skip)
        rows = [(negative_embeds, prompt_embeds)] + [  # several regions: each one's prompt, in one UNet call
            self.encode_prompt(text, device, num_images_per_prompt, do_cfg, negative, lora_scale=lora_scale,
                               clip_skip=clip_skip)[::-1] for text, negative in self.region_prompts(negative_prompt,
                                                                                                    params)]
        prompt_embeds = region_major(rows, do_cfg)

        # 3-7. For the whole image or each crop: source latent and mask, schedule, blended denoising, finishing
        def conditioning_for(prepared) -> dict:
            return {"prompt_embeds": prompt_embeds}

        def unet_call(model_input: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
            return self.unet(model_input, t, encoder_hidden_states=cond["prompt_embeds"],
                             cross_attention_kwargs=cross_attention_kwargs, return_dict=False)[0]

        output = self.run_blended_edit(
            image, mask_image, params, conditioning_for=conditioning_for, unet_call=unet_call,
            guidance_scale=guidance_scale, guidance_rescale=guidance_rescale, generator=generator,
            batch_size=batch_size, dtype=prompt_embeds.dtype, output_type=output_type, prompt=prompt, scorer=scorer,
            callback_on_step_end=callback_on_step_end, tensor_inputs=tensor_inputs, eta=eta,
            region_masks=region_masks)
        self.maybe_free_model_hooks()
        return output if return_dict else output.to_tuple()
