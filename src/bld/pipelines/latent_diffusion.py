"""Blended Latent Diffusion on the paper's own model family: CompVis' LDM text-to-image (LDMBert, 256 px).

The paper's results come from `CompVis/ldm-text2im-large-256`: an LDMBert text encoder, a text-conditioned
UNet and a KL autoencoder at factor 8, run at 256 px with DDIM, guidance 5.0 and four results ranked by
CLIP. diffusers loads it as `LDMTextToImagePipeline`, whose components (vqvae, bert, tokenizer, unet,
scheduler) this pipeline takes as they are.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from diffusers import AutoencoderKL, LDMTextToImagePipeline
from diffusers.image_processor import VaeImageProcessor

from ..params import DEFAULTS, Region
from .blended import BlendedLatentMixin, call_settings, callback_tensor_inputs, region_major
from .stable_diffusion import ImageInput


class BlendedLatentDiffusionLDMPipeline(BlendedLatentMixin, LDMTextToImagePipeline):
    """Text-driven local editing with an LDM text-to-image checkpoint (the paper's model family).

    Same algorithm and arguments as BlendedLatentDiffusionPipeline, without the SD-only extras (LoRA
    scale, clip_skip, guidance rescale). Its default guidance is the paper's 5.0; the prompt is encoded
    by LDMBert at the tokenizer's 77 tokens, the negative prompt (default "") likewise.
    """

    default_guidance_scale = 5.0
    _callback_tensor_inputs = ["latents", "prompt_embeds"]

    def __init__(self, vqvae, bert, tokenizer, unet, scheduler):
        if not isinstance(vqvae, AutoencoderKL):
            raise ValueError(f"vqvae is a {type(vqvae).__name__}; blending needs the KL autoencoder (AutoencoderKL) "
                             "of the LDM text-to-image models")
        super().__init__(vqvae=vqvae, bert=bert, tokenizer=tokenizer, unet=unet, scheduler=scheduler)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)

    @property
    def vae(self) -> AutoencoderKL:
        """The autoencoder, under the name the shared steps use (LDM calls it vqvae)."""
        return self.vqvae

    def prepare_extra_step_kwargs(self, generator, eta: float) -> dict:
        """eta and generator for the schedulers whose step takes them (DDIM's eta, the ancestral ones)."""
        accepted = set(inspect.signature(self.scheduler.step).parameters)
        return {k: v for k, v in (("eta", eta), ("generator", generator)) if k in accepted}

    def encode_texts(self, texts: list[str], device) -> torch.Tensor:
        tokens = self.tokenizer(texts, padding="max_length", max_length=self.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt")
        return self.bert(tokens.input_ids.to(device))[0]

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
        eta: float = 0.0,
        guidance_cutoff: float = DEFAULTS.guidance_cutoff,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        regions: Sequence[Region | dict | str] = (),
        region_masks: Sequence[ImageInput] = (),
    ):
        """Edit the masked region of `image` to follow `prompt`; keep the rest. The arguments are
        BlendedLatentDiffusionPipeline's (see its docstring); prompt_embeds are LDMBert's last hidden states."""
        tensor_inputs = callback_tensor_inputs(callback_on_step_end, callback_on_step_end_tensor_inputs)
        params, guidance_scale, batch_size = self.resolve_settings(prompt, prompt_embeds, **call_settings(locals()))
        device = self._execution_device

        # 1. Validate the inputs
        self.check_edit_inputs(prompt, image, mask_image, params, generator, batch_size, output_type, scorer,
                               prompt_embeds, negative_prompt_embeds, tensor_inputs)

        # 2. Encode the prompt and, for classifier-free guidance, the negative prompt (each region's too)
        do_cfg = guidance_scale > 1.0
        rows = [self.prompt_rows(prompt, negative_prompt, num_images_per_prompt, do_cfg, device, prompt_embeds,
                                 negative_prompt_embeds)]
        rows += [self.prompt_rows(text, negative, num_images_per_prompt, do_cfg, device)
                 for text, negative in self.region_prompts(negative_prompt, params)]
        prompt_embeds = region_major(rows, do_cfg)

        # 3-7. For the whole image or each crop: source latent and mask, schedule, blended denoising, finishing
        def conditioning_for(prepared) -> dict:
            return {"prompt_embeds": prompt_embeds}

        def unet_call(model_input: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
            return self.unet(model_input, t, encoder_hidden_states=cond["prompt_embeds"], return_dict=False)[0]

        output = self.run_blended_edit(
            image, mask_image, params, conditioning_for=conditioning_for, unet_call=unet_call,
            guidance_scale=guidance_scale, guidance_rescale=0.0, generator=generator, batch_size=batch_size,
            dtype=prompt_embeds.dtype, output_type=output_type, prompt=prompt, scorer=scorer,
            callback_on_step_end=callback_on_step_end, tensor_inputs=tensor_inputs, eta=eta,
            region_masks=region_masks)
        self.maybe_free_model_hooks()
        return output if return_dict else output.to_tuple()

    def prompt_rows(self, prompt, negative_prompt, per_prompt: int, do_cfg: bool, device, embeds=None,
                    negative_embeds=None) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(negative rows or None, conditional rows), each prompt's LDMBert embedding repeated for its results;
        the negative prompt defaults to ""."""
        if embeds is None:
            embeds = self.encode_texts([prompt] if isinstance(prompt, str) else list(prompt), device)
        negative_rows = None
        if do_cfg:
            if negative_embeds is None:
                negative = negative_prompt or ""
                negative = [negative] * len(embeds) if isinstance(negative, str) else list(negative)
                if len(negative) != len(embeds):
                    raise ValueError(f"got {len(negative)} negative prompts for {len(embeds)} prompts")
                negative_embeds = self.encode_texts(negative, device)
            negative_rows = self.repeated(negative_embeds, per_prompt, device)
        return negative_rows, self.repeated(embeds, per_prompt, device)

    def repeated(self, embeds: torch.Tensor, per_prompt: int, device) -> torch.Tensor:
        return embeds.to(device=device, dtype=self.unet.dtype).repeat_interleave(per_prompt, dim=0)
