"""The blended loop on flow-matching models (SD3 / SD3.5, FLUX.1).

These models are trained on the straight path between data and noise: at noise level sigma the noised
source is (1 - sigma) z0 + sigma eps, and the transformer predicts the velocity eps - z0 that a
flow-matching Euler step follows. Blending is then as for SD: after every step, the denoised latent
inside the mask, the source at the next step's sigma outside it, and the clean source after the last.
Deterministic DDIM on this path is the same Euler step, so `ddim` names it too (bld.pipelines.schedulers).
"""

from __future__ import annotations

import inspect

import numpy as np
import torch

from ..ops.blending import num_skipped_steps
from .blended import BlendedLatentMixin


def calculate_shift(image_seq_len: int, base_seq_len: int, max_seq_len: int, base_shift: float,
                    max_shift: float) -> float:
    """The schedule's shift mu for an image of `image_seq_len` tokens: linear in the token count between
    (base_seq_len, base_shift) and (max_seq_len, max_shift), as FLUX.1 and SD3.5's dynamic shifting use."""
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * slope + base_shift - slope * base_seq_len


class FlowMatchingMixin(BlendedLatentMixin):
    """BlendedLatentMixin's hooks for a flow-matching transformer and FlowMatchEulerDiscreteScheduler."""

    patch_size: int = 2  # latent cells per transformer token side (SD3's patch embedding, FLUX's packing)
    custom_sigmas: bool = False  # FLUX.1 passes sigmas linspace(1, 1/n, n); SD3 the scheduler's own

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.transformer

    @property
    def size_multiple(self) -> int:
        return self.vae_scale_factor * self.patch_size

    @property
    def native_size(self) -> int:
        """The side the model was trained at: 1024 px for SD3 / SD3.5 and FLUX.1."""
        return int(self.default_sample_size) * self.vae_scale_factor

    @property
    def bucket_step(self) -> int:
        """Crop sizes are multiples of the token size in pixels, and at least 1/16 of the native side."""
        token = self.size_multiple
        return max(token, self.native_size // 16 // token * token)

    def scale_model_input(self, model_input: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model_input  # the transformer takes the noised latent as it is

    def prepare_extra_step_kwargs(self, generator, eta: float) -> dict:
        """The generator, for a scheduler set to stochastic sampling; eta has no meaning on the flow path."""
        accepted = set(inspect.signature(self.scheduler.step).parameters)
        return {"generator": generator} if "generator" in accepted and not isinstance(generator, list) else {}

    def noised_source(self, z0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                      index: int) -> torch.Tensor:
        """(1 - sigma) z0 + sigma eps at the sigma of timesteps[index] (the schedule's own value)."""
        sigma = self.scheduler.sigmas[self.scheduler.begin_index + index].to(device=z0.device, dtype=z0.dtype)
        return (1.0 - sigma) * z0 + sigma * noise

    def flow_shift(self, latent_size: tuple[int, int]) -> float | None:
        """mu for a scheduler with dynamic shifting, from the piece's token count; None without."""
        config = self.scheduler.config
        if not config.get("use_dynamic_shifting", False):
            return None
        tokens = (latent_size[0] // self.patch_size) * (latent_size[1] // self.patch_size)
        return calculate_shift(tokens, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                               config.get("base_shift", 0.5), config.get("max_shift", 1.15))

    def blended_timesteps(self, num_inference_steps: int, skip_fraction: float, device,
                          latent_size: tuple[int, int] | None = None) -> torch.Tensor:
        """The model's own schedule (shifted for the piece's size where the model does), from the first kept
        step: its sigmas start at 1 (pure noise), so skipping starts the edit from a partly noised source."""
        if latent_size is None:
            raise ValueError("a flow-matching schedule depends on the latent size: pass latent_size")
        sigmas = np.linspace(1.0, 1.0 / num_inference_steps, num_inference_steps) if self.custom_sigmas else None
        if sigmas is not None and self.scheduler.config.get("use_flow_sigmas", False):
            sigmas = None
        self.scheduler.set_timesteps(num_inference_steps, device=device, sigmas=sigmas,
                                     mu=self.flow_shift(latent_size))
        start = num_skipped_steps(num_inference_steps, skip_fraction)
        self.scheduler.set_begin_index(start)
        return self.scheduler.timesteps[start:]
