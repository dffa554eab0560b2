"""The math of Blended Latent Diffusion as small pure functions (PAPER.md section 1)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage


def binarize_mask(mask: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Soft mask in [0, 1] -> hard mask {0, 1}; values at or above `threshold` are edited."""
    return (mask >= threshold).to(mask.dtype)


def latent_mask(mask: torch.Tensor, latent_size: tuple[int, int], mode: str = "any") -> torch.Tensor:
    """Pixel mask (B, 1, H, W) in {0, 1} -> latent mask (B, 1, h, w) in {0, 1}.

    'any' marks every latent cell that the mask touches (adaptive max-pool), so thin strokes and small
    regions survive; 'nearest' samples the pixel at each cell's center, as the paper's code does with
    PIL's NEAREST resize; 'inside' marks the cells the mask covers whole, so what is generated stays
    within the mask's pixels, except that a part of the mask covering no cell whole (a thin stroke or a
    dot on its own) keeps every cell it touches, as in 'any', rather than vanish; 'top-left' samples each
    cell's first pixel, as diffusers' inpaint pipeline does (torch's 'nearest').
    """
    if mode == "any":
        return F.adaptive_max_pool2d(mask, latent_size)
    if mode == "inside":
        return _inside_cells(mask, latent_size)
    if mode == "nearest":
        return F.interpolate(mask, size=latent_size, mode="nearest-exact")
    if mode == "top-left":
        return F.interpolate(mask, size=latent_size, mode="nearest")
    raise ValueError(f"latent mask mode {mode!r} is not one of any, nearest, inside, top-left")


def _inside_cells(mask: torch.Tensor, latent_size: tuple[int, int]) -> torch.Tensor:
    """'inside' of latent_mask: whole cells, plus the touched cells of parts that have no whole cell."""
    whole = -F.adaptive_max_pool2d(-mask, latent_size)
    touched = F.adaptive_max_pool2d(mask, latent_size)
    out = whole.clone()
    for b in range(mask.shape[0]):
        parts, count = ndimage.label(touched[b, 0].cpu().numpy() > 0, structure=np.ones((3, 3)))
        if count == 0:
            continue
        has_whole = ndimage.maximum(whole[b, 0].cpu().numpy(), parts, index=np.arange(1, count + 1))
        lacking = np.isin(parts, np.flatnonzero(np.asarray(has_whole) == 0) + 1)
        out[b, 0][torch.from_numpy(lacking).to(out.device)] = 1
    return out


def num_skipped_steps(num_inference_steps: int, skip_fraction: float) -> int:
    """Steps skipped before blending starts: int(steps * fraction), as the official code (50, 0.25 -> 12)."""
    return int(num_inference_steps * skip_fraction)


def blend(foreground: torch.Tensor, background: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """z = z_fg * m + z_bg * (1 - m): keep the denoised latent inside the mask, the source outside."""
    return (1 - mask) * background + mask * foreground


def dilate(mask: torch.Tensor, kernel: int) -> torch.Tensor:
    """Binary dilation of a (B, 1, h, w) mask with a square kernel of odd side `kernel`."""
    return F.max_pool2d(mask, kernel_size=kernel, stride=1, padding=kernel // 2)


def shrinking_masks(mask: torch.Tensor, iterations: int) -> list[torch.Tensor]:
    """Progressive mask shrinking (PAPER.md section 3): N dilations with kernels 3 + 2i, largest first,
    then the original mask. N = 0 gives [mask]."""
    return [dilate(mask, 3 + 2 * i) for i in reversed(range(iterations))] + [mask]


def phase_of_step(step: int, num_steps: int, num_phases: int) -> int:
    """Index of the mask used at `step` when `num_phases` masks share the steps in equal phases;
    the last step always uses the last (original) mask."""
    if step == num_steps - 1:
        return num_phases - 1
    return min(num_phases - 1, step * num_phases // num_steps)
