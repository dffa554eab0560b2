"""Blended Latent Diffusion for FLUX.1 (dev, schnell and their fine-tunes): a flow-matching transformer on
packed latents.

The components are diffusers' FluxPipeline's: CLIP (pooled) and T5 text encoders, the FLUX transformer, a
16-channel VAE with a shift factor, and FlowMatchEulerDiscreteScheduler with resolution-dependent shift.
The blended loop keeps the latents spatial, (B, 16, h, w), so that masks blend them cell by cell; they are
packed into 2x2-cell tokens for each transformer call and unpacked after it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusers import FluxPipeline

from ..params import DEFAULTS, Region
from .blended import call_settings, callback_tensor_inputs, region_major
from .flow_matching import FlowMatchingMixin
from .stable_diffusion import ImageInput


class BlendedLatentDiffusionFluxPipeline(FlowMatchingMixin, FluxPipeline):
    """Text-driven local editing with any FLUX.1 text-to-image checkpoint.

    Same algorithm and arguments as BlendedLatentDiffusionPipeline, with FLUX's meaning of guidance:
    `guidance_scale` (default 3.5) is the distilled guidance FLUX.1-dev takes as an input (schnell has
    none and ignores it); `true_cfg_scale` > 1 with a negative prompt adds classifier-free guidance, a
    second transformer pass per step, as in diffusers' FluxPipeline. `prompt_2` goes to T5.
    """

    default_guidance_scale = 3.5
    custom_sigmas = True
    _callback_tensor_inputs = ["latents", "prompt_embeds", "pooled_prompt_embeds"]

    @property
    def native_size(self) -> int:
        """The side of the largest image the schedule's shift is set for, sqrt(max_image_seq_len) tokens:
        1024 px for FLUX.1's 4096 (the transformer's config holds no size)."""
        tokens = int(round(self.scheduler.config.get("max_image_seq_len", 4096) ** 0.5))
        return tokens * self.size_multiple

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
        true_cfg_scale: float = 1.0,
        max_sequence_length: int = 512,
        eta: float = 0.0,
        guidance_cutoff: float = DEFAULTS.guidance_cutoff,
        prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        joint_attention_kwargs: dict[str, Any] | None = None,
        regions: Sequence[Region | dict | str] = (),
        region_masks: Sequence[ImageInput] = (),
    ):
        """Edit the masked region of `image` to follow `prompt`; see BlendedLatentDiffusionPipeline.__call__.
        guidance_cutoff ends the true classifier-free guidance (the distilled guidance stays)."""
        tensor_inputs = callback_tensor_inputs(callback_on_step_end, callback_on_step_end_tensor_inputs)
        params, guidance_scale, batch_size = self.resolve_settings(prompt, prompt_embeds, **call_settings(locals()))
        has_negative = negative_prompt is not None or negative_prompt_embeds is not None
        do_cfg = true_cfg_scale > 1.0 and has_negative
        device = self._execution_device

        # 1. Validate the inputs
        self.check_edit_inputs(prompt, image, mask_image, params, generator, batch_size, output_type, scorer,
                               prompt_embeds, negative_prompt_embeds, tensor_inputs)
        if prompt_embeds is not None and pooled_prompt_embeds is None:
            raise ValueError("with prompt_embeds FLUX also needs pooled_prompt_embeds (from the CLIP encoder)")
        if true_cfg_scale > 1.0 and not has_negative:
            raise ValueError("true_cfg_scale > 1 needs a negative prompt (FLUX's classifier-free guidance is "
                             "against it); pass negative_prompt or true_cfg_scale=1")

        # 2. Encode the prompt with CLIP and T5, and for true guidance the negative prompt (each region's too)
        encode = dict(device=device, num_images_per_prompt=num_images_per_prompt,
                      max_sequence_length=max_sequence_length, lora_scale=(joint_attention_kwargs or {}).get("scale"))
        embeds, pooled, text_ids = self.encode_prompt(prompt, prompt_2, prompt_embeds=prompt_embeds,
                                                      pooled_prompt_embeds=pooled_prompt_embeds, **encode)
        negative = (self.encode_prompt(negative_prompt, negative_prompt_2, prompt_embeds=negative_prompt_embeds,
                                       pooled_prompt_embeds=negative_pooled_prompt_embeds, **encode)[:2]
                    if do_cfg else (None, None))
        rows = [(embeds, pooled, *negative)]
        for text, region_negative in self.region_prompts(negative_prompt, params):
            region_rows = self.encode_prompt(text, None, **encode)[:2]
            region_negatives = self.encode_prompt(region_negative or "", None, **encode)[:2] if do_cfg else (None, None)
            rows.append((*region_rows, *region_negatives))
        conditioning = self.conditioning(rows, do_cfg)

        # 3-7. For the whole image or each crop: source latent and mask, schedule, blended denoising, finishing
        output = self.run_blended_edit(
            image, mask_image, params, conditioning_for=lambda prepared: conditioning,
            unet_call=self.transformer_call(text_ids, guidance_scale, joint_attention_kwargs),
            guidance_scale=true_cfg_scale if do_cfg else 1.0, guidance_rescale=0.0, generator=generator,
            batch_size=batch_size, dtype=embeds.dtype, output_type=output_type, prompt=prompt, scorer=scorer,
            callback_on_step_end=callback_on_step_end, tensor_inputs=tensor_inputs, eta=eta,
            region_masks=region_masks)
        self.maybe_free_model_hooks()
        return output if return_dict else output.to_tuple()

    @staticmethod
    def conditioning(rows: list[tuple], do_cfg: bool) -> dict[str, torch.Tensor]:
        """The transformer's conditioning from each region's (embeds, pooled, negative embeds, negative pooled),
        the main prompt's first: region-major, negative rows first when guided."""
        return {"prompt_embeds": region_major([(row[2], row[0]) for row in rows], do_cfg),
                "pooled_prompt_embeds": region_major([(row[3], row[1]) for row in rows], do_cfg)}

    def transformer_call(self, text_ids: torch.Tensor, guidance_scale: float,
                         joint_attention_kwargs: dict[str, Any] | None = None):
        """unet_call for the blended loop: spatial latents packed into tokens, the FLUX transformer at
        t / 1000 (with the distilled guidance where the model takes it), the velocity unpacked."""
        def call(model_input: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
            batch, channels, height, width = model_input.shape
            tokens = self._pack_latents(model_input, batch, channels, height, width)
            image_ids = self._prepare_latent_image_ids(batch, height // 2, width // 2, model_input.device,
                                                       model_input.dtype)
            guidance = None
            if self.transformer.config.guidance_embeds:
                guidance = torch.full((batch,), guidance_scale, device=model_input.device, dtype=torch.float32)
            timestep = t.expand(batch).to(model_input.dtype) / 1000  # in this order, as diffusers rounds it
            velocity = self.transformer(hidden_states=tokens, timestep=timestep,
                                        guidance=guidance, pooled_projections=cond["pooled_prompt_embeds"],
                                        encoder_hidden_states=cond["prompt_embeds"], txt_ids=text_ids,
                                        img_ids=image_ids, joint_attention_kwargs=joint_attention_kwargs,
                                        return_dict=False)[0]
            return self._unpack_latents(velocity, height * self.vae_scale_factor, width * self.vae_scale_factor,
                                        self.vae_scale_factor)

        return call
