"""Seams of soft masks against binary ones, measured on the world with the bundled model.

Each task is a main-suite "add" or "replace" task (its own seeds, apart from the main suite's). Every way
of masking edits the same tasks with the same seeds and the bundled model's recommended settings:
the binary mask; its edge blurred (--mask-blur, a soft mask whose gray levels are strengths); the mask
grown and then blurred, so the soft band lies outside the object. We measure the seam (edge ΔE:
CIEDE2000 across the binary mask's edge, 2 px each side), the judge's batch precision, and the
background PSNR outside the binary mask (a blurred mask also changes pixels just outside it).

    python -m bld.world.evaluation.soft_seams --tasks 24
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import PIL.Image
import torch

from ...editing import run_edit
from ...loading import default_model, load_pipeline
from ...model_defaults import model_edit_defaults
from ...params import EditParams
from .. import scenes as world
from ..judge import EDIT_MIN_PROB, load_judge
from . import scoring
from .suite import task_rng

MASKINGS = {  # name -> EditParams overrides
    "binary": {},
    "blur 4 px": {"mask_blur": 4.0},
    "grow 3 px, blur 4 px": {"mask_grow": 3, "mask_blur": 4.0},
}
KINDS = ("add", "replace")


def tasks(n: int, seed: int = 0) -> list[world.EditTask]:
    """`n` add / replace tasks in turn (main-suite tasks from their own stream)."""
    return [world.sample_edit_task(task_rng(seed, "main", 30_000 + i), size=64, kind=KINDS[i % 2]) for i in range(n)]


def masking_rows(edit, judge, suite: list[world.EditTask], draws=None, min_prob: float = EDIT_MIN_PROB,
                 on_run=None) -> list[dict]:
    """One row per masking of MASKINGS. `edit(task, index, overrides)` makes the results of one task with
    those EditParams overrides; `draws` (scoring.bootstrap_indices) adds a batch-precision interval."""
    rows = []
    for name, overrides in MASKINGS.items():
        judged = []
        for i, task in enumerate(suite):
            start = time.perf_counter()
            images = edit(task, i, overrides)
            judged.append(scoring.judge_and_measure(judge, i, task, images, seconds=time.perf_counter() - start,
                                                    min_prob=min_prob))
            if on_run is not None:
                on_run(i, name)
        rows.append(masking_row(name, judged, draws))
    return rows


def masking_row(name: str, judged: list[scoring.Judged], draws=None) -> dict:
    correct = [c for j in judged for c in j.correct]
    psnrs = [p for j in judged for p in j.background_psnr if math.isfinite(p)]
    _, lo, hi = scoring.mean_ci(scoring.per_task_arrays(judged)["fraction"], draws)
    return {"masking": name, "results": len(correct), "batch_precision": float(np.mean(correct)),
            "batch_precision_ci": [lo, hi], "edge_delta_e": float(np.mean([e for j in judged for e in j.edge_delta_e])),
            "background_psnr": float(np.mean(psnrs)) if psnrs else math.inf,
            "seconds_per_result": sum(j.seconds for j in judged) / max(1, len(correct))}


def measure(n: int, num_images: int) -> list[dict]:
    """The standalone measurement: the bundled model's recommended settings, unranked, seeds 100 + i."""
    torch.manual_seed(0)
    pipe = load_pipeline(default_model(), device="cpu")
    pipe.set_progress_bar_config(disable=True)
    defaults = model_edit_defaults(default_model())

    def edit(task, i, overrides):
        mask = PIL.Image.fromarray(task.mask.astype(np.uint8) * 255)
        params = EditParams.from_dict({**defaults, "prompt": task.prompt, "num_images": num_images,
                                       "seed": 100 + i, "rank": False, **overrides})
        return [r.image for r in run_edit(pipe, task.image, mask, params)]

    return masking_rows(edit, load_judge(), tasks(n))


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=24)
    parser.add_argument("--num-results", type=int, default=4)
    args = parser.parse_args(argv)
    rows = measure(args.tasks, args.num_results)
    for row in rows:
        print(f"{row['masking']:22s} batch precision {100 * row['batch_precision']:.1f}%, edge ΔE "
              f"{row['edge_delta_e']:.2f}, background PSNR {row['background_psnr']:.1f} dB ({row['results']} results)")
    print(json.dumps({"benchmark": "soft_seams", "tasks": args.tasks, "rows": rows}))
    return rows


if __name__ == "__main__":
    main()
