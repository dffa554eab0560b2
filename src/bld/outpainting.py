"""Outpainting: extend the canvas and let the model draw the new area, keeping every original pixel.

The canvas is the input plus the extension on each side, the new area pre-filled from the input's edges
(the source latent of the blended loop starts there, so the pre-fill sets the new area's first colors).
The edit's mask is the new area plus an overlap band just inside the input's old border, so the drawing
joins the photo without a seam; every original pixel outside that band is kept (pixel reconstruction
pastes them back exactly), and crop-and-stitch edits a box around the new area at the model's size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import PIL.Image

from .image_io import MAX_PIXELS, InputError

Fill = Literal["edge", "telea"]
FILLS = ("edge", "telea")
DEFAULT_OVERLAP = 16
TELEA_SIDE = 512  # OpenCV's inpainting runs at most at this side, then is upscaled (it is slow on big areas)


@dataclass(frozen=True)
class Extension:
    """Pixels added on each side, and the overlap band (inside the input) that is redrawn with them."""

    left: int = 0
    right: int = 0
    top: int = 0
    bottom: int = 0
    overlap: int = DEFAULT_OVERLAP
    fill: Fill = "edge"

    def check(self, size: tuple[int, int], max_pixels: int = MAX_PIXELS) -> None:
        """One-line InputErrors for an extension that adds nothing, is negative, or makes the canvas too big."""
        sides = {"left": self.left, "right": self.right, "top": self.top, "bottom": self.bottom}
        negative = [f"--{name} {value}" for name, value in sides.items() if value < 0]
        if negative:
            raise InputError(f"{', '.join(negative)}: extensions are pixels to add, 0 or more")
        if not any(sides.values()):
            raise InputError("nothing to outpaint: pass --left, --right, --top and/or --bottom with a number of "
                             "pixels to add")
        if self.overlap < 0:
            raise InputError(f"--overlap {self.overlap}: the overlap band is 0 or more pixels")
        if self.fill not in FILLS:
            raise InputError(f"--fill {self.fill!r} is not one of {', '.join(FILLS)}")
        width, height = self.canvas_size(size)
        if width * height > max_pixels:
            raise InputError(f"the outpainted canvas would be {width}x{height} ({width * height / 1e6:.1f} MP); "
                             f"the limit is {max_pixels / 1e6:.1f} MP: extend by less (or raise --max-megapixels)")

    def canvas_size(self, size: tuple[int, int]) -> tuple[int, int]:
        width, height = size
        return width + self.left + self.right, height + self.top + self.bottom

    def to_dict(self) -> dict:
        return asdict(self)


def outpaint_canvas(image: PIL.Image.Image, extension: Extension) -> tuple[PIL.Image.Image, PIL.Image.Image]:
    """(canvas, mask): the input on the extended canvas with the new area pre-filled, and the mask (white =
    draw) of the new area plus the overlap band inside the input's sides that were extended."""
    import cv2  # here, not at the top: the CLI reads this module's names while it builds its --help

    image = image.convert("RGB")
    width, height = image.size
    e = extension
    pixels = np.asarray(image)
    canvas = cv2.copyMakeBorder(pixels, e.top, e.bottom, e.left, e.right, cv2.BORDER_CONSTANT, value=0)
    known = np.zeros(canvas.shape[:2], bool)
    known[e.top:e.top + height, e.left:e.left + width] = True
    canvas = prefill(canvas, known, e.fill)
    mask = ~known
    band = min(e.overlap, width // 2, height // 2)
    inner = known.copy()
    if e.left:
        inner[:, e.left:e.left + band] = False
    if e.right:
        inner[:, e.left + width - band:e.left + width] = False
    if e.top:
        inner[e.top:e.top + band, :] = False
    if e.bottom:
        inner[e.top + height - band:e.top + height, :] = False
    mask |= known & ~inner
    return PIL.Image.fromarray(canvas), PIL.Image.fromarray(mask.astype(np.uint8) * 255)


def prefill(canvas: np.ndarray, known: np.ndarray, method: Fill) -> np.ndarray:
    """The unknown pixels of `canvas` (H, W, 3 uint8) filled from the known ones.

    'edge': each unknown pixel takes the nearest known one (the input's border repeated outward), then is
    blurred more the farther it lies from the input, so the new area starts as the input's colors without
    its stripes.
    'telea': OpenCV's fast-marching inpainting (Telea), run at most at TELEA_SIDE px and upscaled.
    """
    import cv2

    if method == "edge":
        # every unknown pixel takes its nearest known pixel (labels number the known pixels in scan order)
        distance, labels = cv2.distanceTransformWithLabels((~known).astype(np.uint8), cv2.DIST_L2, 5,
                                                           labelType=cv2.DIST_LABEL_PIXEL)
        rows, cols = np.nonzero(known)
        nearest = labels - 1
        extended = canvas[rows[nearest], cols[nearest]]
        del labels, nearest
        sigma = max(2.0, float(distance.max()) / 4)
        blurred = cv2.GaussianBlur(extended, (0, 0), sigma)
        weight = np.clip(distance / (2 * sigma), 0, 1)[..., None]
        filled = extended * (1 - weight) + blurred * weight
        return np.where(known[..., None], canvas, np.round(filled)).astype(np.uint8)
    if method == "telea":
        height, width = known.shape
        scale = min(1.0, TELEA_SIDE / max(height, width))
        small = cv2.resize(canvas, (max(1, round(width * scale)), max(1, round(height * scale))),
                           interpolation=cv2.INTER_AREA)
        hole = cv2.resize((~known).astype(np.uint8), small.shape[1::-1], interpolation=cv2.INTER_NEAREST)
        filled = cv2.inpaint(small, hole, 5, cv2.INPAINT_TELEA)
        filled = cv2.resize(filled, (width, height), interpolation=cv2.INTER_CUBIC)
        return np.where(known[..., None], canvas, filled).astype(np.uint8)
    raise ValueError(f"fill {method!r} is not one of {', '.join(FILLS)}")


def outpaint(pipe, image: PIL.Image.Image, prompt: str, *, left: int = 0, right: int = 0, top: int = 0,
             bottom: int = 0, overlap: int = DEFAULT_OVERLAP, fill: Fill = "edge", **kwargs):
    """Extend `image` by the given pixels on each side and draw the new area to follow `prompt`, with any
    BlendedLatentDiffusion(XL)Pipeline; `kwargs` go to the pipeline call (crop-and-stitch, steps, ...).
    Returns the pipeline's output: images of the input's size plus the extension."""
    extension = Extension(left, right, top, bottom, overlap, fill)
    extension.check(image.size)
    canvas, mask = outpaint_canvas(image, extension)
    return pipe(prompt, canvas, mask, **kwargs)
