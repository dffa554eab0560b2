"""The demo's input: a scene of the bundled model's world (bld.world), a mask over its object, a prompt."""

from __future__ import annotations

import numpy as np
import PIL.Image

from .scenes import BackgroundSpec, ObjectSpec, Scene, render

DEMO_PROMPT = "a red star"
DEMO_SIZE = 64  # the bundled model's native size
DEMO_BOX = (4, 20, 32, 48)  # x0, y0, x1, y1 (exclusive): 28 x 28 px around the circle


def demo_scene() -> tuple[PIL.Image.Image, PIL.Image.Image]:
    """A yellow circle on blue stripes (64 x 64 px) and an "L" mask, 255 on a box around the circle (replace it)."""
    scene = Scene(BackgroundSpec("stripes", "blue"), (ObjectSpec("circle", "yellow", (18.0, 34.0), 24.0),),
                  DEMO_SIZE)
    mask = np.zeros((DEMO_SIZE, DEMO_SIZE), np.uint8)
    x0, y0, x1, y1 = DEMO_BOX
    mask[y0:y1, x0:x1] = 255
    return render(scene), PIL.Image.fromarray(mask, "L")
