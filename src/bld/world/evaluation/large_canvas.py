"""The large-canvas suite: small edits on a canvas several times the model's native 64 px.

Each task is a main-suite "add" or "replace" task (objects of the usual 20-26 px, a mask of 13-32 px)
whose 64 px scene is one tile of a `scale` x `scale` grid of other seeded world scenes. Three ways to
edit it, all with the same seeds and settings:

- crop-and-stitch (crop 'auto'): a padded box around the mask at the model's 64 px, pasted back;
- the whole canvas at its own size (crop 'off'): the model works far above its native size;
- downscale-edit-upscale: the whole canvas edited at 64 px and the result resized back up.

The judge sees the task's own 64 px tile of each result; the background PSNR is over the whole canvas.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import PIL.Image

from ...ops import metrics as image_metrics
from .. import scenes as world
from . import scoring
from .methods import EvalContext, MethodOutput, run_bld
from .suite import SUITE_STREAM, task_rng

TILE = 64
KINDS = ("add", "replace")


@dataclass(frozen=True)
class LargeTask:
    """A 64 px edit task placed at `offset` (left, top) on a larger canvas of other scenes."""

    tile: world.EditTask
    canvas: PIL.Image.Image
    mask: np.ndarray  # (H, W) bool on the canvas
    offset: tuple[int, int]

    def canvas_task(self) -> world.EditTask:
        """The task as run_bld takes it: the canvas, its mask, the tile's prompt and target."""
        return replace(self.tile, image=self.canvas, mask=self.mask)

    def tile_of(self, image: PIL.Image.Image) -> PIL.Image.Image:
        left, top = self.offset
        return image.crop((left, top, left + TILE, top + TILE))


def large_canvas_suite(n: int, seed: int = 0, scale: int = 3) -> list[LargeTask]:
    """`n` tasks, kinds in turn add, replace, each on a (64 scale)^2 canvas at a random tile."""
    tasks = []
    for i in range(n):
        rng = np.random.default_rng([seed, SUITE_STREAM["large"], i])
        tile = world.sample_edit_task(task_rng(seed, "main", 10_000 + i), size=TILE, kind=KINDS[i % len(KINDS)])
        canvas = np.zeros((TILE * scale, TILE * scale, 3), np.uint8)
        where = int(rng.integers(scale * scale))
        for k in range(scale * scale):
            row, col = divmod(k, scale)
            scene = tile.image if k == where else world.render(world.sample_scene(rng, size=TILE))
            canvas[row * TILE:(row + 1) * TILE, col * TILE:(col + 1) * TILE] = np.asarray(scene)
        row, col = divmod(where, scale)
        mask = np.zeros(canvas.shape[:2], bool)
        mask[row * TILE:(row + 1) * TILE, col * TILE:(col + 1) * TILE] = tile.mask
        tasks.append(LargeTask(tile, PIL.Image.fromarray(canvas), mask, (col * TILE, row * TILE)))
    return tasks


METHODS = {  # name -> (label, EditParams overrides)
    "crop-and-stitch": ("crop-and-stitch (crop auto, padding 0.25)", {"crop": "auto"}),
    "crop-and-stitch-context": ("crop-and-stitch, padding 1", {"crop": "auto", "crop_padding": 1.0}),
    "whole-canvas": ("whole canvas at its size (crop off)", {"crop": "off"}),
    "downscale": ("downscale to 64 px, edit, upscale", {"crop": "off", "width": TILE, "height": TILE}),
}


def run_large_canvas(ctx: EvalContext, judge, tasks: list[LargeTask], seed_of, min_prob: float,
                     on_run=None) -> dict[str, list[scoring.Judged]]:
    """Every method on every task; per method the judged tiles, with the canvas-wide background PSNR."""
    judged: dict[str, list[scoring.Judged]] = {name: [] for name in METHODS}
    for i, task in enumerate(tasks):
        for name, (_, overrides) in METHODS.items():
            output: MethodOutput = run_bld(ctx, task.canvas_task(), seed_of(i), **overrides)
            tiles = [task.tile_of(image) for image in output.images]
            result = scoring.judge_and_measure(judge, i, task.tile, tiles, scores=output.scores, seeds=output.seeds,
                                               seconds=output.seconds, failed=output.failed, min_prob=min_prob)
            result.background_psnr = [image_metrics.background_psnr(task.canvas, image, task.mask)
                                       for image in output.images]
            judged[name].append(result)
            if on_run is not None:
                on_run(i, name)
    return judged
