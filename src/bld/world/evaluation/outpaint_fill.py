"""Which pre-fill outpainting should start from, measured on the world with the bundled model.

Each task is a seeded 64 px world scene cut to 64 x 40 (its bottom 24 px dropped); outpainting puts the
24 px back (--bottom 24) with the prompt of the full scene's caption. Against the true scene we measure,
over the new area, the PSNR and the mean color error (how close the drawing's colors come to what was
there; the pre-fill's own PSNR, before any drawing, for reference), and the seam's CIEDE2000 difference
across the old border. Every fill uses the same tasks, seeds and settings (the bundled model's
recommended ones).

    python -m bld.world.evaluation.outpaint_fill --tasks 24
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import torch

from ...editing import run_edit
from ...loading import default_model, load_pipeline
from ...model_defaults import model_edit_defaults
from ...ops.metrics import edge_color_difference
from ...outpainting import FILLS, Extension, outpaint_canvas
from ...params import EditParams
from .. import scenes as world

KEEP, ADD = 40, 24


def tasks(n: int, seed: int = 0):
    for i in range(n):
        scene = world.sample_scene(np.random.default_rng([seed, 3, i]), size=64)
        truth = world.render(scene)
        yield truth, truth.crop((0, 0, 64, KEEP)), scene.caption()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    return 10 * math.log10(1 / mse) if mse else math.inf


def measure(fill: str, n: int, pipe, num_images: int) -> dict:
    defaults = model_edit_defaults(default_model())
    psnrs, errors, seams, fill_psnrs = [], [], [], []
    for i, (truth, cut, caption) in enumerate(tasks(n)):
        extension = Extension(bottom=ADD, overlap=4, fill=fill)
        canvas, mask = outpaint_canvas(cut, extension)
        params = EditParams.from_dict({**defaults, "prompt": caption, "num_images": num_images, "seed": 100 + i,
                                       "rank": False})
        truth_new = np.asarray(truth, dtype=np.float64)[KEEP:] / 255
        fill_psnrs.append(psnr(np.asarray(canvas, dtype=np.float64)[KEEP:] / 255, truth_new))
        for result in run_edit(pipe, canvas, mask, params):
            new = np.asarray(result.image, dtype=np.float64)[KEEP:] / 255
            psnrs.append(psnr(new, truth_new))
            errors.append(float(np.abs(new.mean(axis=(0, 1)) - truth_new.mean(axis=(0, 1))).mean() * 255))
            border = np.zeros((64, 64), bool)
            border[KEEP:] = True
            seams.append(edge_color_difference(result.image, border))
    return {"fill": fill, "results": len(psnrs), "psnr_new_area": float(np.mean(psnrs)),
            "psnr_fill_alone": float(np.mean(fill_psnrs)),
            "mean_color_error": float(np.mean(errors)), "seam_delta_e": float(np.mean(seams))}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=24)
    parser.add_argument("--num-results", type=int, default=2)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    pipe = load_pipeline(default_model(), device="cpu")
    pipe.set_progress_bar_config(disable=True)
    rows = [measure(fill, args.tasks, pipe, args.num_results) for fill in FILLS]
    for row in rows:
        print(f"{row['fill']:6s} PSNR of the new area {row['psnr_new_area']:.2f} dB, mean color error "
              f"{row['mean_color_error']:.1f} / 255 (the pre-fill alone: {row['psnr_fill_alone']:.2f} dB), "
              f"seam ΔE {row['seam_delta_e']:.2f} ({row['results']} results)")
    print(json.dumps({"benchmark": "outpaint_fill", "tasks": args.tasks, "rows": rows}))
    return rows


if __name__ == "__main__":
    main()
