"""Crop-and-stitch geometry: which boxes of a photo an edit works on, and at what size.

A model draws well at its native resolution (UNet sample size x VAE factor: 512 px for SD 1.5, 1024 for
SDXL). An edit of a large photo therefore works on a box around the mask, padded with context, resized to
one of a few sizes of about the native area (buckets), and is stitched back into the photo. Everything
here is integer box math on NumPy masks: no torch, no images.

Boxes are (left, top, right, bottom) in input pixels, right and bottom excluded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

MAX_ASPECT = 2.5  # buckets are no longer than this on either side
MIN_FILL = 0.8  # a bucket's area is at least this share of the native area
WHOLE_IMAGE_SHARE = 0.6  # crops covering this share of the image: edit the whole image instead
MAX_CROPS = 8  # more mask parts than this far apart: one crop around them all
COARSE_SIDE = 1024  # mask parts are found on a grid of at most this many cells per side

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Crop:
    """One box of the input and the size (a bucket) the model edits it at."""

    box: Box
    width: int
    height: int

    @property
    def box_size(self) -> tuple[int, int]:
        """(width, height) of the box in input pixels."""
        left, top, right, bottom = self.box
        return right - left, bottom - top

    def covers(self, width: int, height: int) -> bool:
        return self.box == (0, 0, width, height)

    def to_dict(self) -> dict:
        return {"box": list(self.box), "size": [self.width, self.height]}


def buckets(native: int, step: int) -> list[tuple[int, int]]:
    """(width, height) sizes of about native x native pixels: sides multiples of `step`, area between
    MIN_FILL and 1 of the native area, no side longer than MAX_ASPECT times the other. native x native is
    always one of them (when it is a multiple of `step`)."""
    if native < step or step < 1:
        raise ValueError(f"native size {native} must be at least the bucket step {step}")
    area = native * native
    sizes = set()
    for width in range(step, int(native * math.sqrt(MAX_ASPECT)) + step, step):
        height = (area // width) // step * step
        if height >= step and width * height >= MIN_FILL * area and max(width / height, height / width) <= MAX_ASPECT:
            sizes.update({(width, height), (height, width)})
    return sorted(sizes, key=lambda s: (s[0] / s[1], s[0]))


def nearest_bucket(aspect: float, sizes: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose width / height is closest to `aspect` (on a log scale)."""
    return min(sizes, key=lambda s: (abs(math.log(s[0] / s[1] / aspect)), -s[0] * s[1]))


def part_boxes(mask: np.ndarray) -> list[Box]:
    """Bounding boxes of the mask's parts (8-connected), found on a coarse grid for speed and then made
    exact; parts closer than a grid cell count as one."""
    height, width = mask.shape
    cell = max(1, math.ceil(max(height, width) / COARSE_SIDE))
    if cell > 1:
        rows, cols = math.ceil(height / cell), math.ceil(width / cell)
        padded = np.zeros((rows * cell, cols * cell), dtype=bool)
        padded[:height, :width] = mask
        coarse = padded.reshape(rows, cell, cols, cell).any(axis=(1, 3))
    else:
        coarse = mask
    labels, count = ndimage.label(coarse, structure=np.ones((3, 3)))
    boxes = []
    for rows_slice, cols_slice in ndimage.find_objects(labels)[:count]:
        top, bottom = rows_slice.start * cell, min(height, rows_slice.stop * cell)
        left, right = cols_slice.start * cell, min(width, cols_slice.stop * cell)
        boxes.append(exact_box(mask[top:bottom, left:right], (left, top)))
    return boxes


def exact_box(mask: np.ndarray, offset: tuple[int, int] = (0, 0)) -> Box:
    """The bounding box of the True pixels of `mask` (which has some), shifted by `offset` (left, top)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    left, top = offset
    return left + int(cols[0]), top + int(rows[0]), left + int(cols[-1]) + 1, top + int(rows[-1]) + 1


def union(boxes: list[Box]) -> Box:
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def overlap(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _span(center: float, length: int, limit: int) -> tuple[int, int]:
    """[start, start + length) centered on `center` as far as the axis [0, limit) allows."""
    length = min(length, limit)
    start = int(round(center - length / 2))
    start = min(max(0, start), limit - length)
    return start, start + length


def fit_crop(part: Box, image_size: tuple[int, int], sizes: list[tuple[int, int]], padding: float,
             min_side: int) -> Crop:
    """The crop for the mask box `part` in an image of `image_size` (width, height): padded on each side by
    `padding` times the box's longer side, at least `min_side` on each side, grown along its shorter side
    to the nearest bucket's aspect ratio, kept inside the image (shifted, then clipped at its borders).
    What clipping leaves of the aspect ratio is absorbed by the resize to the bucket."""
    width, height = image_size
    left, top, right, bottom = part
    pad = padding * max(right - left, bottom - top)
    box_w = min(width, max(min_side, math.ceil(right - left + 2 * pad)))
    box_h = min(height, max(min_side, math.ceil(bottom - top + 2 * pad)))
    target = nearest_bucket(box_w / box_h, sizes)
    aspect = target[0] / target[1]
    if box_w / box_h < aspect:
        box_w = min(width, math.ceil(box_h * aspect))
    else:
        box_h = min(height, math.ceil(box_w / aspect))
    x0, x1 = _span((left + right) / 2, box_w, width)
    y0, y1 = _span((top + bottom) / 2, box_h, height)
    bucket = nearest_bucket((x1 - x0) / (y1 - y0), sizes)
    return Crop((x0, y0, x1, y1), *bucket)


def whole_image(image_size: tuple[int, int], sizes: list[tuple[int, int]]) -> Crop:
    """The whole image at the bucket nearest its aspect ratio."""
    width, height = image_size
    return Crop((0, 0, width, height), *nearest_bucket(width / height, sizes))


def plan_crops(mask: np.ndarray, native: int, step: int, padding: float = 0.25,
               sizes: list[tuple[int, int]] | None = None) -> list[Crop]:
    """The crops an edit of the True region of `mask` (H, W) works on, for a model of native size `native`.

    - An image of at most the native area is edited whole (cropping would only trade its context for
      upscaling).
    - Otherwise each part of the mask gets its own padded crop; parts whose crops overlap share one, so
      no pixel is edited twice. More than MAX_CROPS crops: one around every part.
    - When the crops together cover WHOLE_IMAGE_SHARE of the image or more, the whole image is edited
      instead (as cheap, with more context).
    The whole image is edited at the bucket nearest its aspect ratio. `sizes`: the buckets (default:
    buckets(native, step)); crops are at least native / 2 on each side, so the model never works on a
    crop upscaled more than twice.
    """
    height, width = mask.shape
    sizes = sizes or buckets(native, step)
    if width * height <= native * native:
        return [whole_image((width, height), sizes)]
    min_side = native // 2
    groups = [[box] for box in part_boxes(mask)]
    if not groups:
        raise ValueError("mask is empty: nothing to edit")
    while True:
        crops = [fit_crop(union(g), (width, height), sizes, padding, min_side) for g in groups]
        pair = next(((i, j) for i in range(len(crops)) for j in range(i + 1, len(crops))
                     if overlap(crops[i].box, crops[j].box)), None)
        if pair is None:
            break
        i, j = pair
        groups[i] = groups[i] + groups.pop(j)
    if len(crops) > MAX_CROPS:
        crops = [fit_crop(union([b for g in groups for b in g]), (width, height), sizes, padding, min_side)]
    covered = sum(c.box_size[0] * c.box_size[1] for c in crops)
    if covered >= WHOLE_IMAGE_SHARE * width * height:
        return [whole_image((width, height), sizes)]
    return crops


def bounding_box(boxes: list[tuple[int, int, int, int]]) -> tuple[int, int, int, int]:
    """The (left, top, right, bottom) box around all of `boxes` (each left, top, right, bottom)."""
    lefts, tops, rights, bottoms = zip(*boxes)
    return min(lefts), min(tops), max(rights), max(bottoms)
