"""What an edit will change, shown before it runs: the crops, the mask and the latent cells redrawn.

`pipe.edit_preview(image, mask, params)` plans the edit without running the model; `render_preview`
draws that plan over the input and `describe_plan` says it in a line (the CLI prints it, the web app
shows both).
"""

from __future__ import annotations

import numpy as np
import PIL.Image
import PIL.ImageDraw

from .ops.blending import num_skipped_steps
from .params import EditParams

PREVIEW_SIDE = 1024  # the preview's longer side at most: a 48 MP photo is shown, not copied
MASK_TINT = np.array([255, 0, 255], np.float32)  # the mask: magenta
CELL_TINT = np.array([0, 192, 255], np.float32)  # latent cells redrawn beyond the mask: cyan
BOX_COLOR = (255, 220, 0)


def render_preview(image: PIL.Image.Image, region: np.ndarray, preview,
                   max_side: int = PREVIEW_SIDE) -> PIL.Image.Image:
    """The input (at most `max_side` px) dimmed where the edit keeps it, the mask (`region`, (H, W) bool)
    tinted magenta, the redrawn cells outside it cyan, and each crop box outlined in yellow."""
    width, height = image.size
    scale = min(1.0, max_side / max(width, height))
    shown = (max(1, round(width * scale)), max(1, round(height * scale)))

    def at_shown_size(mask: np.ndarray) -> np.ndarray:
        return np.asarray(PIL.Image.fromarray(mask).resize(shown, PIL.Image.NEAREST))

    pixels = np.asarray(image.convert("RGB").resize(shown, PIL.Image.BILINEAR), dtype=np.float32)
    inside, cells = at_shown_size(region), at_shown_size(preview.area)
    out = pixels * 0.45
    out[cells] = pixels[cells] * 0.6 + CELL_TINT * 0.4
    out[inside] = pixels[inside] * 0.5 + MASK_TINT * 0.5
    picture = PIL.Image.fromarray(np.round(out).astype(np.uint8))
    draw = PIL.ImageDraw.Draw(picture)
    for crop in preview.crops:
        left, top, right, bottom = (round(v * scale) for v in crop.box)
        draw.rectangle((left, top, max(left, right - 1), max(top, bottom - 1)), outline=BOX_COLOR,
                       width=max(1, round(2 * max(shown) / 512)))
    return picture


def describe_plan(preview, params: EditParams, image_size: tuple[int, int]) -> str:
    """One line: what is edited, at what size, and how many model steps it costs."""
    width, height = image_size
    crops = preview.crops
    native = preview.native_size
    if len(crops) == 1 and crops[0].covers(width, height):
        crop = crops[0]
        where = f"the whole {width}x{height} image, drawn at {crop.width}x{crop.height}"
    else:
        sizes = ", ".join(f"{c.box_size[0]}x{c.box_size[1]} drawn at {c.width}x{c.height}" for c in crops)
        where = f"{len(crops)} crop{'s' if len(crops) > 1 else ''} around the mask ({sizes})"
    kept = params.num_inference_steps - num_skipped_steps(params.num_inference_steps, params.skip_fraction)
    results = f"{params.num_images} result{'s' if params.num_images > 1 else ''}"
    each = " in each crop" if len(crops) > 1 else ""
    regions = f", {len(params.regions) + 1} regions' prompts in each model call" if params.regions else ""
    return (f"edits {where}; the model's native size is {native} px; {kept} denoising steps x {results}{each}"
            f"{regions}")
