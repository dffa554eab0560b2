"""Blended Latent Diffusion for Stable Diffusion 3 / 3.5: an MMDiT transformer on a flow-matching path.

The components are diffusers' StableDiffusion3Pipeline's: two CLIP text encoders and an optional T5, the
SD3 transformer (patch size 2), a 16-channel VAE with a shift factor, and FlowMatchEulerDiscreteScheduler.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusers import StableDiffusion3Pipeline

from ..params import DEFAULTS, Region
from .blended import call_settings, callback_tensor_inputs, region_major
from .flow_matching import FlowMatchingMixin
from .stable_diffusion import ImageInput


class BlendedLatentDiffusionSD3Pipeline(FlowMatchingMixin, StableDiffusion3Pipeline):
    """Text-driven local editing with any SD3 / SD3.5 text-to-image checkpoint (medium, large, turbo).

    Same algorithm and arguments as BlendedLatentDiffusionPipeline, plus `prompt_2` / `prompt_3` (and their
    negatives) for the second CLIP and the T5 encoder, and `max_sequence_length` for T5. Guidance is
    classifier-free, as in diffusers' SD3 pipeline (default 7.0; SD3.5 Large is usually run at 3.5 to 4.5).
    """

    default_guidance_scale = 7.0
    _callback_tensor_inputs = ["latents", "prompt_embeds", "pooled_prompt_embeds"]

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
        prompt_3: str | list[str] | None = None,
        negative_prompt_2: str | list[str] | None = None,
        negative_prompt_3: str | list[str] | None = None,
        clip_skip: int | None = None,
        max_sequence_length: int = 256,
        eta: float = 0.0,
        guidance_cutoff: float = DEFAULTS.guidance_cutoff,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        joint_attention_kwargs: dict[str, Any] | None = None,
        regions: Sequence[Region | dict | str] = (),
        region_masks: Sequence[ImageInput] = (),
    ):
        """Edit the masked region of `image` to follow `prompt`; see BlendedLatentDiffusionPipeline.__call__.
        callback_on_step_end_tensor_inputs may name "latents", "prompt_embeds", "pooled_prompt_embeds" and
        "mask". regions / region_masks: as there, each region's prompt through all three text encoders."""
        tensor_inputs = callback_tensor_inputs(callback_on_step_end, callback_on_step_end_tensor_inputs)
        params, guidance_scale, batch_size = self.resolve_settings(prompt, prompt_embeds, **call_settings(locals()))
        do_cfg = guidance_scale > 1.0
        device = self._execution_device

        # 1. Validate the inputs
        self.check_edit_inputs(prompt, image, mask_image, params, generator, batch_size, output_type, scorer,
                               prompt_embeds, negative_prompt_embeds, tensor_inputs)
        if prompt_embeds is not None and pooled_prompt_embeds is None:
            raise ValueError("with prompt_embeds SD3 also needs pooled_prompt_embeds (from the CLIP encoders)")

        # 2. Encode the prompt with the CLIP and T5 encoders (each region's too)
        encode = dict(device=device, num_images_per_prompt=num_images_per_prompt, do_classifier_free_guidance=do_cfg,
                      clip_skip=clip_skip, max_sequence_length=max_sequence_length,
                      lora_scale=(joint_attention_kwargs or {}).get("scale"))
        rows = [self.encode_prompt(prompt, prompt_2, prompt_3, negative_prompt=negative_prompt,
                                   negative_prompt_2=negative_prompt_2, negative_prompt_3=negative_prompt_3,
                                   prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
                                   pooled_prompt_embeds=pooled_prompt_embeds,
                                   negative_pooled_prompt_embeds=negative_pooled_prompt_embeds, **encode)]
        rows += [self.encode_prompt(text, None, None, negative_prompt=negative, **encode)
                 for text, negative in self.region_prompts(negative_prompt, params)]
        conditioning = self.conditioning(rows, do_cfg)

        # 3-7. For the whole image or each crop: source latent and mask, schedule, blended denoising, finishing
        output = self.run_blended_edit(
            image, mask_image, params, conditioning_for=lambda prepared: conditioning,
            unet_call=self.transformer_call(joint_attention_kwargs), guidance_scale=guidance_scale,
            guidance_rescale=0.0, generator=generator, batch_size=batch_size,
            dtype=conditioning["prompt_embeds"].dtype, output_type=output_type, prompt=prompt, scorer=scorer,
            callback_on_step_end=callback_on_step_end, tensor_inputs=tensor_inputs, eta=eta,
            region_masks=region_masks)
        self.maybe_free_model_hooks()
        return output if return_dict else output.to_tuple()

    @staticmethod
    def conditioning(rows: list[tuple], do_cfg: bool) -> dict[str, torch.Tensor]:
        """The transformer's conditioning from each region's encode_prompt output (the main prompt's first):
        token embeddings and pooled embeddings, region-major, negative rows first when guided."""
        return {"prompt_embeds": region_major([(negative, embeds) for embeds, negative, _, _ in rows], do_cfg),
                "pooled_prompt_embeds": region_major([(negative, pooled) for _, _, pooled, negative in rows], do_cfg)}

    def transformer_call(self, joint_attention_kwargs: dict[str, Any] | None = None):
        """unet_call for the blended loop: the SD3 transformer at timestep t (0 to 1000) on the spatial latents."""
        def call(model_input: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
            return self.transformer(hidden_states=model_input, timestep=t.expand(model_input.shape[0]),
                                    encoder_hidden_states=cond["prompt_embeds"],
                                    pooled_projections=cond["pooled_prompt_embeds"],
                                    joint_attention_kwargs=joint_attention_kwargs, return_dict=False)[0]

        return call
