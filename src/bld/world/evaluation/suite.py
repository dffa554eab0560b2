"""The evaluation suites: fixed, seeded edit tasks drawn from the synthetic world (`bld.world`).

Main suite (PAPER.md section 5, on the world instead of ImageNet): `world.sample_edit_task` scenes with
rectangular masks whose sides lie in [1/5, 1/2] of the image, object prompts inside the mask ("add",
"replace") and background prompts with the inverted mask ("background"); the kinds take turns, so
every third task is of each kind.

Thin suite (PAPER.md section 3): strokes 2-3 px wide (a gently curved line drawn with PIL), either
across an object, with the object's caption in a new color as the prompt ("thin-object": "a blue
heart" for a red heart), or over empty background away from every object, with a plain background
caption of a new color ("thin-background": "a blue background"). The target is the stroke showing
the new color; `ThinTask.ground_truth()` is the source with the stroke painted in it.

Task i of a suite comes from `np.random.default_rng([seed, SUITE_STREAM[suite], i])`, so a task does
not depend on how many tasks are drawn.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import PIL.Image
import PIL.ImageDraw
from scipy import ndimage

from .. import scenes as world
from ..scenes import EditTask

MAIN_KINDS = world.EDIT_KINDS  # ("add", "replace", "background")
THIN_KINDS = ("thin-object", "thin-background")
SUITE_STREAM = {"main": 0, "thin": 1, "large": 2, "regions": 3, "seams": 4}
STROKE_WIDTHS = (2, 3)  # px at 64 px
MIN_STROKE_PIXELS = 15


def task_rng(seed: int, suite: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SUITE_STREAM[suite], index])


def main_suite(n: int, seed: int = 0, size: int = 64) -> list[EditTask]:
    """`n` edit tasks, kinds in turn add, replace, background."""
    return [world.sample_edit_task(task_rng(seed, "main", i), size=size, kind=MAIN_KINDS[i % len(MAIN_KINDS)])
            for i in range(n)]


def thin_suite(n: int, seed: int = 0, size: int = 64) -> list[EditTask]:
    """`n` thin-stroke tasks, kinds in turn thin-object, thin-background."""
    return [sample_thin_task(task_rng(seed, "thin", i), size=size, kind=THIN_KINDS[i % len(THIN_KINDS)])
            for i in range(n)]


def _bezier(p0, p1, p2, n: int = 24) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n)[:, None]
    p0, p1, p2 = (np.asarray(p, dtype=np.float64) for p in (p0, p1, p2))
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2


def stroke_mask(points: np.ndarray, width: int, size: int) -> np.ndarray:
    """(size, size) bool: a polyline through `points` (x, y px) drawn `width` px wide with round joints."""
    im = PIL.Image.new("L", (size, size), 0)
    PIL.ImageDraw.Draw(im).line([tuple(map(float, p)) for p in points], fill=255, width=int(width), joint="curve")
    return np.asarray(im) >= 128


def _curve(rng, center, length: float, bend: float) -> np.ndarray:
    """A quadratic Bezier of chord `length` through `center` at a random angle, bowed by `bend` x chord / 2."""
    a = rng.uniform(0.0, 2 * math.pi)
    d = np.array([math.cos(a), math.sin(a)]) * length / 2
    normal = np.array([-d[1], d[0]]) * rng.uniform(-bend, bend)
    c = np.asarray(center, dtype=np.float64)
    return _bezier(c - d, c + normal, c + d)


def _visible_mask(scene: world.Scene, i: int) -> np.ndarray:
    """Object i's silhouette minus the objects drawn on top of it."""
    m = scene.object_mask(i)
    for j in range(i + 1, len(scene.objects)):
        m &= ~scene.object_mask(j)
    return m


def sample_thin_task(rng: np.random.Generator, size: int = 64, kind: str | None = None) -> EditTask:
    """A thin-stroke edit task of `kind` (uniform over THIN_KINDS if None); see the module docstring.

    thin-object: the stroke runs through the object's centre, clipped to its visible silhouette shrunk
    by 1 px (so every stroke pixel is the object's, not an antialiased edge); the new color contrasts
    with the background. thin-background: the stroke stays 3 px away from every object and the image
    border; its color contrasts with both background colors. Strokes cover at least 15 px."""
    kind = kind or THIN_KINDS[rng.integers(len(THIN_KINDS))]
    if kind not in THIN_KINDS:
        raise ValueError(f"kind must be one of {THIN_KINDS}")
    lo = round(size * 20 / 64)
    hi = round(size * 26 / 64)
    for _ in range(1000):
        scene = world.sample_scene(rng, size=size, min_objects=1, max_objects=2, min_object_size=lo,
                                   max_object_size=hi)
        width = int(STROKE_WIDTHS[rng.integers(len(STROKE_WIDTHS))])
        if kind == "thin-object":
            i = int(rng.integers(len(scene.objects)))
            obj = scene.objects[i]
            colors = [c for c in world.object_colors_for(scene.background) if c != obj.color]
            color = colors[rng.integers(len(colors))]
            inside = ndimage.binary_erosion(_visible_mask(scene, i), iterations=1)
            mask = stroke_mask(_curve(rng, obj.center, obj.size, 0.4), width, size) & inside
            target = replace(obj, color=color)
            target_scene = replace(scene, objects=scene.objects[:i] + (target,) + scene.objects[i + 1:])
        else:
            colors = world.object_colors_for(scene.background)
            color = colors[rng.integers(len(colors))]
            occupied = np.zeros((size, size), bool)
            for j in range(len(scene.objects)):
                occupied |= scene.object_mask(j)
            occupied = ndimage.binary_dilation(occupied, iterations=3)
            points = _curve(rng, rng.uniform(size / 8, size * 7 / 8, 2), rng.uniform(size * 0.3, size * 0.55), 0.5)
            if points.min() < 2 or points.max() > size - 3:
                continue
            mask = stroke_mask(points, width, size)
            if (mask & occupied).any():
                continue
            target = world.BackgroundSpec("plain", color)
            target_scene = world.Scene(target, scene.objects, size)
        if mask.sum() < MIN_STROKE_PIXELS:
            continue
        return EditTask(world.render(scene), mask, target.caption(), target, kind, scene, target_scene)
    raise ValueError(f"could not lay out a {kind!r} thin task at {size} px")


def describe(task: EditTask) -> dict:
    """A JSON-ready description of a task (everything needed to recognise it in the report)."""
    ys, xs = np.nonzero(task.mask)
    return {"kind": task.kind, "prompt": task.prompt, "source_caption": task.scene.caption(),
            "mask_pixels": int(task.mask.sum()), "mask_box": [int(xs.min()), int(ys.min()), int(xs.max()) + 1,
                                                                int(ys.max()) + 1]}
