"""A labelled contact sheet: input, mask and results side by side, for a person to look at."""

from __future__ import annotations

import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont

LABEL_HEIGHT = 18


def make_grid(images: list[PIL.Image.Image], labels: list[str], *, tile: int = 256,
              columns: int | None = None) -> PIL.Image.Image:
    """Tiles scaled to fit `tile` px, each with its label underneath, on a white sheet."""
    if len(images) != len(labels):
        raise ValueError(f"got {len(images)} images but {len(labels)} labels")
    columns = columns or len(images)
    rows = -(-len(images) // columns)
    sheet = PIL.Image.new("RGB", (columns * tile, rows * (tile + LABEL_HEIGHT)), "white")
    draw = PIL.ImageDraw.Draw(sheet)
    font = PIL.ImageFont.load_default()
    for k, (image, label) in enumerate(zip(images, labels)):
        x, y = (k % columns) * tile, (k // columns) * (tile + LABEL_HEIGHT)
        thumb = image.convert("RGB")
        scale = tile / max(thumb.size)
        thumb = thumb.resize((max(1, round(thumb.width * scale)), max(1, round(thumb.height * scale))),
                             PIL.Image.NEAREST if scale >= 2 else PIL.Image.LANCZOS)
        sheet.paste(thumb, (x + (tile - thumb.width) // 2, y + (tile - thumb.height) // 2))
        draw.text((x + 4, y + tile + 3), label, fill="black", font=font)
    return sheet
