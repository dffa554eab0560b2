"""Shaping a mask before an edit (grow, blur) and soft masks: per-pixel strength, per-step masks.

A soft mask's gray level s in [0, 1] is the pixel's strength: it joins the edit for the last s of the
kept steps (as Differential Diffusion does), so at kept step i of n the edited pixels are those with
s >= 1 - i / n. Each step's pixel mask goes through the latent mask mode like a binary mask, so a latent
cell joins when its pixels do by that mode ('any': its strongest pixel). A binary mask gives the same
mask at every step: the binary algorithm, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch

from .blending import latent_mask


@dataclass(frozen=True)
class ShapedMask:
    """The mask an edit uses, at the input's size: strength in [0, 1] (H, W) float32, already inverted
    when asked; soft when it has gray levels that act as strengths."""

    strength: np.ndarray
    soft: bool

    @property
    def region(self) -> np.ndarray:
        """The pixels the edit may change (strength > 0), as bool (H, W)."""
        return self.strength > 0


def needs_shaping(soft_mask: bool, grow: int, blur: float) -> bool:
    return bool(soft_mask or grow or blur)


def mask_gray(mask, size: tuple[int, int], soft: bool) -> np.ndarray:
    """A PIL mask, or an (H, W) array in [0, 1] or 0-255, as float32 (H, W) in [0, 1] at `size` (width,
    height): resized bilinearly when soft, by nearest neighbour when binary (as the pipelines resize)."""
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().float().cpu().numpy().reshape(mask.shape[-2:])
    if isinstance(mask, np.ndarray):
        array = mask.astype(np.float32)
        if np.issubdtype(mask.dtype, np.integer):
            array /= float(np.iinfo(mask.dtype).max)
        mask = PIL.Image.fromarray(array.reshape(array.shape[:2]), mode="F")
    else:
        mask = mask.convert("L")
    if mask.size != tuple(size):
        mask = mask.resize(tuple(size), PIL.Image.BILINEAR if soft else PIL.Image.NEAREST)
    gray = np.asarray(mask, dtype=np.float32)
    return gray / 255.0 if mask.mode == "L" else np.clip(gray, 0.0, 1.0)


def shape_mask(mask, size: tuple[int, int], *, invert: bool, soft_mask: bool, grow: int = 0,
               blur: float = 0.0) -> ShapedMask:
    """The mask as the edit uses it: gray levels kept (soft_mask) or thresholded at 0.5, inverted if asked,
    grown by `grow` px (negative shrinks; on gray levels a max / min filter over a disc), then blurred
    (Gaussian, sigma = blur / 2). Grow and blur work in pixels of the input's size `size` (width, height)."""
    import cv2

    keep_gray = soft_mask or blur > 0
    gray = mask_gray(mask, size, keep_gray)
    strength = gray if soft_mask else (gray >= 0.5).astype(np.float32)
    if invert:
        strength = 1.0 - strength
    if grow:
        radius = abs(int(grow))
        disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        strength = (cv2.dilate if grow > 0 else cv2.erode)(strength, disc)
    if blur > 0:
        strength = cv2.GaussianBlur(strength, (0, 0), blur / 2.0)
        strength[strength < 1.0 / 512] = 0.0  # the blur's far tail would edit the whole image faintly
    strength = np.clip(strength, 0.0, 1.0).astype(np.float32)
    soft = bool(((strength > 0) & (strength < 1)).any())
    return ShapedMask(strength, soft)


def step_thresholds(num_steps: int) -> list[float]:
    """The strength a pixel needs to be edited at each of `num_steps` kept steps: 1 - i / n."""
    return [1.0 - i / num_steps for i in range(num_steps)]


def soft_latent_masks(strength: torch.Tensor, latent_size: tuple[int, int], mode: str,
                      num_steps: int) -> list[torch.Tensor]:
    """Per kept step, the latent mask (1, 1, h, w) in {0, 1} of the pixels whose strength (1, 1, H, W) reaches
    that step's threshold; steps with the same pixel mask share one tensor."""
    masks, cache = [], {}
    for threshold in step_thresholds(num_steps):
        edited = strength >= threshold - 1e-6
        key = int(edited.sum())  # thresholds only add pixels: the count identifies the mask
        if key not in cache:
            cache[key] = latent_mask(edited.float(), latent_size, mode)
        masks.append(cache[key])
    return masks
