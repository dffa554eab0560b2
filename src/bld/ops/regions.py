"""Several regions in one edit, each with its own prompt: who owns each pixel and latent cell, and the noise
prediction that follows each cell's own region.

Regions are numbered in order, the edit's main mask first. Where they overlap the later region wins, for its
prompt and its strength alike, so each pixel belongs to one region at most. The union of the regions is the
edited area: it is blended with the source, cropped and pasted as one mask, so outside every region the
result is the input.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .masks import shape_mask


@dataclass(frozen=True)
class RegionLayout:
    """The regions at the input's size. owner: (H, W) int, the region each pixel belongs to (-1: none);
    alpha: (H, W) float32 in [0, 1], the owner's shaped mask (the final paste's alpha); schedule: (H, W)
    float32, alpha times the owner's strength (when each pixel joins the edit, as a soft mask's gray)."""

    owner: np.ndarray
    alpha: np.ndarray
    schedule: np.ndarray
    count: int

    @property
    def union(self) -> np.ndarray:
        return self.owner >= 0

    @property
    def soft(self) -> bool:
        """The alpha has gray levels (soft masks, or a blurred edge)."""
        return bool(((self.alpha > 0) & (self.alpha < 1)).any())

    @property
    def timed(self) -> bool:
        """Some pixels join the edit later than their alpha says (a region of strength below 1)."""
        return not np.array_equal(self.schedule, self.alpha)

    def region(self, index: int) -> np.ndarray:
        """The pixels region `index` owns, as bool (H, W)."""
        return self.owner == index


def layout_regions(strengths: list[np.ndarray], region_strengths: list[float]) -> RegionLayout:
    """The layout of regions given each one's shaped mask (H, W) in [0, 1] (0 = not in it) and its strength;
    later regions win where they overlap. A region left with no pixel of its own is refused."""
    owner = np.full(strengths[0].shape, -1, dtype=np.int16)
    for index, strength in enumerate(strengths):
        owner[strength > 0] = index
    alpha = np.zeros(owner.shape, np.float32)
    schedule = np.zeros(owner.shape, np.float32)
    for index, (strength, weight) in enumerate(zip(strengths, region_strengths)):
        own = owner == index
        if not own.any():
            raise ValueError(f"region {index + 1} is covered entirely by later regions (where regions overlap "
                             f"the later one wins): it would edit nothing")
        alpha[own] = strength[own]
        schedule[own] = strength[own] * np.float32(weight)
    return RegionLayout(owner, alpha, schedule, len(strengths))


def shape_regions(masks: list, size: tuple[int, int], strengths: list[float], *, soft_mask: bool, grow: int = 0,
                  blur: float = 0.0) -> RegionLayout:
    """Each region's mask (the main one first) shaped as a single mask is (bld.ops.masks.shape_mask at `size`,
    width x height), laid out with the regions' strengths; an empty mask is refused by its region's number."""
    shaped = []
    for number, mask in enumerate(masks, start=1):
        strength = shape_mask(mask, size, invert=False, soft_mask=soft_mask, grow=grow, blur=blur).strength
        if not (strength > 0).any():
            raise ValueError(f"region {number}'s mask is empty: paint the region to change in white")
        shaped.append(strength)
    return layout_regions(shaped, strengths)


def cell_owners(owner: np.ndarray, count: int, latent_size: tuple[int, int]) -> torch.Tensor:
    """(count, 1, h, w) in {0, 1}, one latent map per region that partitions the latent grid: a cell goes to the
    last region with a pixel in it, and a cell no region touches to the nearest region's cell (so the band
    that progressive shrinking adds around a region follows that region's prompt). `owner` is the owner map
    of the piece being edited, at any size."""
    pixels = torch.from_numpy(np.ascontiguousarray(owner)).long()[None, None]
    grid = np.full(latent_size, -1, dtype=np.int64)
    for index in range(count):
        touched = F.adaptive_max_pool2d((pixels == index).float(), latent_size)[0, 0].numpy() > 0
        grid[touched] = index
    if (grid < 0).all():
        grid[:] = 0
    elif (grid < 0).any():
        _, (rows, cols) = ndimage.distance_transform_edt(grid < 0, return_indices=True)
        grid = grid[rows, cols]
    cells = torch.from_numpy(grid)[None] == torch.arange(count).view(count, 1, 1)
    return cells[:, None].float()


def combine_region_noise(noise: torch.Tensor, owners: torch.Tensor) -> torch.Tensor:
    """One prediction (B, C, h, w) from the regions' predictions (R * B, C, h, w), region-major: each cell takes
    its owner's prediction (`owners`, from cell_owners), value for value."""
    count = owners.shape[0]
    per_region = noise.view(count, noise.shape[0] // count, *noise.shape[1:])
    combined = per_region[0]
    for index in range(1, count):
        combined = torch.where(owners[index].to(torch.bool), per_region[index], combined)
    return combined


def region_view(region: np.ndarray, boxes: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """The crop boxes (left, top, right, bottom) that hold some of `region`'s pixels."""
    return [box for box in boxes if region[box[1]:box[3], box[0]:box[2]].any()]
