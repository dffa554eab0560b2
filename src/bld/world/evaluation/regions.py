"""The multi-region suite: two objects to draw in one edit, each in its own mask with its own prompt.

Each task is a world scene with two target objects, each "added" (the source has empty background there)
or "replaced" (the source has another object in its place); the kinds take turns add+add, add+replace,
replace+replace. Each target has a rectangular mask holding it (and the object it replaces) whole, with
sides in [size/5, size/2] as in the main suite; the two rectangles are disjoint and touch no other object.
Region 0 is the left one. Three ways to make the edit, with the same seeds and settings:

- `bld-regions`: one edit with two regions (the first mask and prompt, `EditParams.regions` for the second);
- `sequential`: two edits in turn, one region each, the second editing the first's top-ranked result
  (what a user does without regions); its seconds are both edits';
- `union-joined`: one edit of the union of the masks with the two prompts joined ("a red star and a blue
  circle").

The judge looks at each region on its own (`RegionTask.region_tasks`, an `EditTask` per region, judged by
the main suite's rule); a result is correct when both regions are. The background is measured outside both
masks.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import PIL.Image
import torch

from ...ops import metrics as image_metrics
from ...params import Region
from .. import scenes as world
from ..judge import EDIT_MIN_PROB
from ..scenes import EditTask
from . import scoring
from .methods import EvalContext, MethodOutput, run_bld
from .suite import describe as describe_edit
from .suite import task_rng

KINDS = (("add", "add"), ("add", "replace"), ("replace", "replace"))
METHODS = {  # name -> label
    "bld-regions": "one edit, two regions",
    "sequential": "two edits in turn, one region each",
    "union-joined": "one edit, union mask, prompts joined",
}


@dataclass(frozen=True)
class RegionTask:
    """A source scene, its edited scene and the two regions of the edit (an EditTask each, on the source)."""

    image: PIL.Image.Image
    scene: world.Scene
    target_scene: world.Scene
    region_tasks: tuple[EditTask, EditTask]

    @property
    def kind(self) -> str:
        return "+".join(t.kind for t in self.region_tasks)

    @property
    def prompt(self) -> str:
        """The two prompts joined, as the world's captions join objects."""
        return " and ".join(t.prompt for t in self.region_tasks)

    @property
    def mask(self) -> np.ndarray:
        """The union of the two masks."""
        return self.region_tasks[0].mask | self.region_tasks[1].mask

    def union_task(self) -> EditTask:
        first = self.region_tasks[0]
        return replace(first, mask=self.mask, prompt=self.prompt, kind=self.kind)

    def ground_truth(self) -> PIL.Image.Image:
        return self.union_task().ground_truth()


def sample_region_task(rng: np.random.Generator, kinds: tuple[str, str] = ("add", "add"), size: int = 64) -> RegionTask:
    """A two-region task (see the module docstring); objects of 20-26 px at 64 px, as in the main suite."""
    lo, hi = round(size * 20 / 64), round(size * 26 / 64)
    for _ in range(1000):
        scene = world.sample_scene(rng, size=size, min_objects=2, max_objects=3, min_object_size=lo,
                                   max_object_size=hi, max_overlap=0.0)
        picks = sorted(rng.choice(len(scene.objects), 2, replace=False), key=lambda i: scene.objects[i].center[0])
        targets = [scene.objects[i] for i in picks]
        others = tuple(o for i, o in enumerate(scene.objects) if i not in picks)
        taken = {(o.shape, o.color) for o in scene.objects}
        olds = [None if kind == "add" else world.replacement(rng, t, scene.background, taken)
                for kind, t in zip(kinds, targets)]
        if any(kind == "replace" and old is None for kind, old in zip(kinds, olds)):
            continue
        rects = []
        for target, old in zip(targets, olds):
            boxes = [target.box()] + ([old.box()] if old is not None else [])
            union = tuple(f(b[k] for b in boxes) for k, f in enumerate((min, min, max, max)))
            rects.append(world._rect_around(rng, union, size))  # the main suite's rectangles and checks
        if None in rects or world._overlap(*rects) > 0 or any(
                world._overlap(r, o.box()) > 0 for r in rects for o in others):
            continue
        source = world.Scene(scene.background, others + tuple(o for o in olds if o is not None), size)
        target_scene = world.Scene(scene.background, others + tuple(targets), size)
        image = world.render(source)
        region_tasks = tuple(EditTask(image, world.rect_mask(rect, size), t.caption(), t, kind, source, target_scene)
                             for rect, t, kind in zip(rects, targets, kinds))
        return RegionTask(image, source, target_scene, region_tasks)
    raise ValueError(f"could not lay out a {kinds!r} two-region task at {size} px")


def region_suite(n: int, seed: int = 0, size: int = 64) -> list[RegionTask]:
    """`n` two-region tasks, kinds in turn add+add, add+replace, replace+replace."""
    return [sample_region_task(task_rng(seed, "regions", i), KINDS[i % len(KINDS)], size) for i in range(n)]


def describe(task: RegionTask) -> dict:
    """A JSON-ready description of a task."""
    return {"kind": task.kind, "prompt": task.prompt, "source_caption": task.scene.caption(),
            "regions": [describe_edit(t) for t in task.region_tasks]}


# ----------------------------------------------------------------------------------------------- methods

def run_regions(ctx: EvalContext, task: RegionTask, seed: int) -> MethodOutput:
    first, second = task.region_tasks
    return run_bld(ctx, first, seed, regions=(Region(second.prompt),), region_masks=[second.mask_image()])


def run_sequential(ctx: EvalContext, task: RegionTask, seed: int) -> MethodOutput:
    first, second = task.region_tasks
    before = run_bld(ctx, first, seed)
    after = run_bld(ctx, replace(second, image=before.images[0]), seed)
    return replace(after, seconds=before.seconds + after.seconds)


def run_union(ctx: EvalContext, task: RegionTask, seed: int) -> MethodOutput:
    return run_bld(ctx, task.union_task(), seed)


RUNNERS = {"bld-regions": run_regions, "sequential": run_sequential, "union-joined": run_union}


# ----------------------------------------------------------------------------------------------- judging

def judge_regions(judge, task_index: int, task: RegionTask, images, *, scores=None, seeds=None,
                  seconds: float = 0.0, failed: str | None = None, min_prob: float = EDIT_MIN_PROB
                  ) -> scoring.Judged:
    """Judge each region of `images` against its own target; correct = both regions are. The background
    numbers are taken outside both masks, the edge ΔE across the union's edge."""
    images = list(images)
    per_region = [scoring.judge_and_measure(judge, task_index, t, images, failed=failed, min_prob=min_prob)
                  for t in task.region_tasks]
    region_correct = [list(flags) for flags in zip(*(j.correct for j in per_region))]
    n = len(images)
    return scoring.Judged(
        task_index, task.kind, [all(flags) for flags in region_correct],
        torch.cat([j.features for j in per_region], dim=-1),
        list(scores) if scores is not None else [None] * n, list(seeds) if seeds is not None else [None] * n,
        seconds, failed,
        background_psnr=[image_metrics.background_psnr(task.image, im, task.mask) for im in images],
        background_ssim=[image_metrics.background_ssim(task.image, im, task.mask) for im in images],
        edge_delta_e=[image_metrics.edge_color_difference(im, task.mask) for im in images],
        answers=[{"regions": [j.answers[k] for j in per_region]} for k in range(n)],
        color_correct=[all(j.color_correct[k] for j in per_region) for k in range(n)],
        form_correct=[all(j.form_correct[k] for j in per_region) for k in range(n)],
        region_correct=region_correct)


def run_region_suite(ctx: EvalContext, judge, tasks: list[RegionTask], seed_of, min_prob: float,
                     on_run=None) -> dict[str, list[tuple[scoring.Judged, MethodOutput]]]:
    """Every method on every task -> per method [(judged, output)] in task order."""
    out: dict[str, list] = {name: [] for name in METHODS}
    for i, task in enumerate(tasks):
        for name in METHODS:
            output = RUNNERS[name](ctx, task, seed_of(i))
            judged = judge_regions(judge, i, task, output.images, scores=output.scores, seeds=output.seeds,
                                   seconds=output.seconds, failed=output.failed, min_prob=min_prob)
            out[name].append((judged, output))
            if on_run is not None:
                on_run(i, name)
    return out


def summarize(judged: list[scoring.Judged], draws: np.ndarray | None) -> dict:
    """scoring.summarize (precision = both regions right) plus each region's own rates with intervals."""
    summary = scoring.summarize(judged, draws)
    summary["regions"] = [scoring.region_rates(judged, r, draws) for r in range(2)]
    return summary


def comparisons(judged: dict[str, list[scoring.Judged]], reps: int, seed: int = 0) -> list[dict]:
    """One edit with two regions against each other method, paired over tasks: both-correct batch and
    best-result precision, differences with 95% bootstrap intervals (no verdict: nothing is claimed)."""
    ours = judged.get("regions:bld-regions")
    out = []
    for other in ("sequential", "union-joined"):
        theirs = judged.get(f"regions:{other}")
        if not ours or not theirs:
            continue
        a, b = scoring.per_task_arrays(ours), scoring.per_task_arrays(theirs)
        draws = scoring.bootstrap_indices(len(ours), reps, seed) if len(ours) >= 2 else None
        for key, metric in (("fraction", "batch precision"), ("top1", "best-result precision")):
            out.append({"comparison": f"{metric}: bld-regions - {other}", "metric": metric,
                        **scoring.paired_difference(a[key], b[key], draws)})
    return out
