"""Blended Latent Diffusion for Stable Diffusion XL: two text encoders, size and crop conditioning."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import StableDiffusionXLPipeline

from ..params import DEFAULTS
from .blended import BlendedLatentMixin, Finishing, callback_tensor_inputs
from .stable_diffusion import ImageInput


class BlendedLatentDiffusionXLPipeline(BlendedLatentMixin, StableDiffusionXLPipeline):
    """Text-driven local editing with any SDXL text-to-image checkpoint (4-channel UNet).

    Same algorithm and arguments as BlendedLatentDiffusionPipeline, plus `prompt_2` and
    `negative_prompt_2` for the second text encoder and the pooled embeddings of diffusers' SDXL
    pipeline. The UNet is told the input's original size and the size it works at, with no crop.
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
    ):
        """Edit the masked region of `image` to follow `prompt`; see BlendedLatentDiffusionPipeline.__call__.
        callback_on_step_end_tensor_inputs may name "latents", "prompt_embeds", "add_text_embeds",
        "add_time_ids" and "mask" (diffusers' SDXLCFGCutoffCallback works)."""
        tensor_inputs = callback_tensor_inputs(callback_on_step_end, callback_on_step_end_tensor_inputs)
        params, guidance_scale, batch_size = self.resolve_settings(
            prompt, prompt_embeds, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
            skip_fraction=skip_fraction, num_images=num_images_per_prompt, invert_mask=invert_mask,
            height=height, width=width, latent_mask_mode=latent_mask_mode, background_noise=background_noise,
            mask_dilation_iterations=mask_dilation_iterations, reconstruction=reconstruction, feather=feather,
            reconstruction_steps=reconstruction_steps, reconstruction_crop=reconstruction_crop,
            reconstruction_background_weight=reconstruction_background_weight, guidance_cutoff=guidance_cutoff,
            paste_outside=paste_outside)
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

        # 3. Source image and mask at a size the model accepts
        prepared = self.prepare_image_and_mask(image, mask_image, height, width, invert_mask)

        # 4. Size conditioning: the input's size, no crop, the size the model works at
        projection_dim = (int(pooled.shape[-1]) if self.text_encoder_2 is None
                          else self.text_encoder_2.config.projection_dim)
        time_ids = self._get_add_time_ids(prepared.original_size, (0, 0), (prepared.height, prepared.width),
                                          dtype=prompt_embeds.dtype, text_encoder_projection_dim=projection_dim)
        time_ids = time_ids.to(device).repeat(batch_size, 1)
        if do_cfg:
            prompt_embeds = torch.cat([negative_embeds, prompt_embeds])
            pooled = torch.cat([negative_pooled, pooled])
            time_ids = torch.cat([time_ids, time_ids])

        # 5. Source latent z0 = E(x) and the latent mask at the latent resolution
        z0, mask = self.source_latent_and_mask(prepared, batch_size, latent_mask_mode, device, prompt_embeds.dtype)

        # 6. The schedule after skipping its first skip_fraction
        timesteps = self.blended_timesteps(num_inference_steps, skip_fraction, device)

        # 7. Denoise, blending with the noised source after every step
        conditioning = {"prompt_embeds": prompt_embeds, "add_text_embeds": pooled.to(device), "add_time_ids": time_ids}

        def unet_call(model_input: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
            added = {"text_embeds": cond["add_text_embeds"], "time_ids": cond["add_time_ids"]}
            return self.unet(model_input, t, encoder_hidden_states=cond["prompt_embeds"], added_cond_kwargs=added,
                             cross_attention_kwargs=cross_attention_kwargs, return_dict=False)[0]

        predict_noise = self.guided_noise_predictor(conditioning, unet_call, guidance_scale, guidance_rescale)
        latents = self.blended_denoise(z0, mask, timesteps, predict_noise, generator,
                                       fresh_noise=background_noise == "fresh",
                                       mask_dilation_iterations=mask_dilation_iterations,
                                       callback_on_step_end=callback_on_step_end, eta=eta,
                                       callback_tensors=conditioning, callback_tensor_inputs=tensor_inputs,
                                       guidance_cutoff=guidance_cutoff)

        # 8. Decode, reconstruct the background, restore the input's size, rank
        finishing = Finishing(reconstruction, feather, reconstruction_steps, reconstruction_crop, scorer,
                              reconstruction_background_weight, paste_outside)
        output = self.finish(latents, prepared, output_type, prompt, finishing, prompt_embeds.dtype)
        self.maybe_free_model_hooks()
        return output if return_dict else output.to_tuple()
