"""Blended Latent Diffusion for Stable Diffusion XL: two text encoders, size and crop conditioning."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusers import StableDiffusionXLPipeline

from ..params import DEFAULTS, Region
from .blended import BlendedLatentMixin, call_settings, callback_tensor_inputs, region_major
from .stable_diffusion import ImageInput


class BlendedLatentDiffusionXLPipeline(BlendedLatentMixin, StableDiffusionXLPipeline):
    """Text-driven local editing with any SDXL text-to-image checkpoint (4-channel UNet).

    Same algorithm and arguments as BlendedLatentDiffusionPipeline, plus `prompt_2` and
    `negative_prompt_2` for the second text encoder and the pooled embeddings of diffusers' SDXL
    pipeline. The UNet is told the size of the image or crop it edits and the size it works at, with no
    crop offset.
    """

    default_guidance_scale = 5.0

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
        prompt_2: str | list[str] | None = None,
        negative_prompt_2: str | list[str] | None = None,
        clip_skip: int | None = None,
        eta: float = 0.0,
        guidance_rescale: float = 0.0,
        guidance_cutoff: float = DEFAULTS.guidance_cutoff,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        regions: Sequence[Region | dict | str] = (),
        region_masks: Sequence[ImageInput] = (),
    ):
        """Edit the masked region of `image` to follow `prompt`; see BlendedLatentDiffusionPipeline.__call__.
        callback_on_step_end_tensor_inputs may name "latents", "prompt_embeds", "add_text_embeds",
        "add_time_ids" and "mask" (diffusers' SDXLCFGCutoffCallback works). regions / region_masks: as there,
        each region's prompt through both text encoders."""
        tensor_inputs = callback_tensor_inputs(callback_on_step_end, callback_on_step_end_tensor_inputs)
        params, guidance_scale, batch_size = self.resolve_settings(prompt, prompt_embeds, **call_settings(locals()))
        do_cfg = guidance_scale > 1.0
        device = self._execution_device

        # 1. Validate the inputs
        self.check_edit_inputs(prompt, image, mask_image, params, generator, batch_size, output_type, scorer,
                               prompt_embeds, negative_prompt_embeds, tensor_inputs)
        if prompt_embeds is not None and pooled_prompt_embeds is None:
            raise ValueError("with prompt_embeds SDXL also needs pooled_prompt_embeds (from the second text encoder)")

        # 2. Encode the prompt with both text encoders
        prompt_embeds, negative_embeds, pooled, negative_pooled = self.encode_prompt(
            prompt, prompt_2, device, num_images_per_prompt, do_cfg, negative_prompt, negative_prompt_2,
            prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds, negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
            lora_scale=(cross_attention_kwargs or {}).get("scale"), clip_skip=clip_skip)

        rows = [(prompt_embeds, negative_embeds, pooled, negative_pooled)] + [  # several regions: each one's prompt
            self.encode_prompt(text, None, device, num_images_per_prompt, do_cfg, negative,
                               lora_scale=(cross_attention_kwargs or {}).get("scale"), clip_skip=clip_skip)
            for text, negative in self.region_prompts(negative_prompt, params)]
        prompt_embeds = region_major([(negative, embeds) for embeds, negative, _, _ in rows], do_cfg)
        pooled = region_major([(negative, embeds) for _, _, embeds, negative in rows], do_cfg)
        projection_dim = (int(pooled.shape[-1]) if self.text_encoder_2 is None
                          else self.text_encoder_2.config.projection_dim)

        # 3-8. For the whole image or each crop: size conditioning, source latent and mask, schedule, denoising
        def conditioning_for(prepared) -> dict:
            """The piece's own size, no crop offset (the model should draw a whole picture of the box), and the
            size the model works at."""
            time_ids = self._get_add_time_ids(prepared.original_size, (0, 0), (prepared.height, prepared.width),
                                              dtype=prompt_embeds.dtype, text_encoder_projection_dim=projection_dim)
            time_ids = time_ids.to(device).repeat(batch_size * (2 if do_cfg else 1) * len(rows), 1)
            return {"prompt_embeds": prompt_embeds, "add_text_embeds": pooled.to(device), "add_time_ids": time_ids}

        def unet_call(model_input: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
            added = {"text_embeds": cond["add_text_embeds"], "time_ids": cond["add_time_ids"]}
            return self.unet(model_input, t, encoder_hidden_states=cond["prompt_embeds"], added_cond_kwargs=added,
                             cross_attention_kwargs=cross_attention_kwargs, return_dict=False)[0]

        output = self.run_blended_edit(
            image, mask_image, params, conditioning_for=conditioning_for, unet_call=unet_call,
            guidance_scale=guidance_scale, guidance_rescale=guidance_rescale, generator=generator,
            batch_size=batch_size, dtype=prompt_embeds.dtype, output_type=output_type, prompt=prompt, scorer=scorer,
            callback_on_step_end=callback_on_step_end, tensor_inputs=tensor_inputs, eta=eta,
            region_masks=region_masks)
        self.maybe_free_model_hooks()
        return output if return_dict else output.to_tuple()
