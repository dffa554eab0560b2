"""A small synthetic scene, its mask and the prompt for the demo (no files needed)."""

from __future__ import annotations

import PIL.Image
import PIL.ImageDraw


DEMO_PROMPT = "a red star"


def demo_scene(size: int = 128) -> tuple[PIL.Image.Image, PIL.Image.Image]:
    """A blue-to-teal gradient with a yellow disc on the left; the mask covers an empty area on the right."""
    scene = PIL.Image.new("RGB", (size, size))
    draw = PIL.ImageDraw.Draw(scene)
    for y in range(size):
        t = y / (size - 1)
        draw.line([(0, y), (size, y)], fill=(int(40 + 20 * t), int(70 + 110 * t), int(200 - 40 * t)))
    s = size / 128
    draw.ellipse([18 * s, 40 * s, 58 * s, 80 * s], fill=(240, 200, 40))
    mask = PIL.Image.new("L", (size, size), 0)
    PIL.ImageDraw.Draw(mask).rectangle([72 * s, 36 * s, 112 * s, 84 * s], fill=255)
    return scene, mask
