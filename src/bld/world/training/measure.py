"""Measure a model of the world against the bundled model's quality bars, with the judge (bld.world.judge).

    python -m bld.world.training.measure --model src/bld/world/bundled_model --out runs/measure [--t2i 240] [--edits 60]

- Text-to-image: `--t2i` one-object scenes from a held-out stream, prompted with their full caption
  ("a red star on blue stripes"); the judge reads the whole image. A sample counts when the object's shape
  and color are the caption's (the judge's top answers); the background is reported too, and the shape
  share per prompted shape (which shapes the model draws, which it does not).
- Edits: `--edits` world edit tasks with an object in the mask ("add" and "replace", random rectangles with
  sides 1/5-1/2 of the image), `--num-images` results each, ranked by the model's CLIP, with the chosen
  background reconstruction (default decoder, as the bar asks). A result counts when `Judge.judge_edits`
  says so (the target's shape and color, each at probability >= 0.9). Reported: share of all results,
  share of CLIP-ranked best results, share of tasks with any correct result, and the background PSNR
  outside the mask against the source image. `--background-edits` adds inverted-mask background tasks.
  Edit settings not given as flags are the model's recommended ones (bld.model_defaults), as `bld edit` uses.

Writes to --out: report.json (also printed); contact sheets t2i.png, edits.png (the first tasks) and
edits-missed.png (tasks whose CLIP-ranked best result is wrong); edits.jsonl, one line per task (prompt,
kind, each result's seed, CLIP score, background PSNR and verdict, best first); with `--save-results`, every
result as edits-results/TTT-R.png (task TTT, rank R), to look at or to rank again.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import get_args

import numpy as np
import PIL.ImageDraw
import torch
from tqdm.auto import tqdm

from ...editing import json_safe, run_edit
from ...grid import LABEL_HEIGHT, make_grid
from ...image_io import save_png_atomic
from ...loading import default_model, load_pipeline, load_scorer
from ...model_defaults import model_edit_defaults
from ...params import BackgroundNoise, EditParams, LatentMaskMode
from .. import scenes as world
from ..judge import load_judge

SHEET_TILE = 128  # px per image in the contact sheets
HELDOUT_BASE = 3_000  # streams [HELDOUT_BASE, seed, i]: never drawn by training (2-element [seed, i] seeds)


def t2i_scenes(n: int, seed: int) -> list[world.Scene]:
    return [world.sample_scene(np.random.default_rng([HELDOUT_BASE, seed, i]), max_objects=1) for i in range(n)]


def edit_tasks(n: int, seed: int, kinds: tuple[str, ...] = ("add", "replace")) -> list[world.EditTask]:
    return [world.sample_edit_task(np.random.default_rng([HELDOUT_BASE, seed, i, 1]), kind=kinds[i % len(kinds)])
            for i in range(n)]


def measure_text_to_image(pipe, judge, n: int, seed: int, steps: int, guidance: float, batch: int = 40):
    """Sample each scene's full caption once; -> (summary, samples [(image, caption, verdict)])."""
    from diffusers import StableDiffusionPipeline

    t2i = StableDiffusionPipeline(**{k: v for k, v in pipe.components.items()
                                     if k in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")},
                                  safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    t2i.set_progress_bar_config(disable=True)
    scenes = t2i_scenes(n, seed)
    samples = []
    for start in tqdm(range(0, n, batch), desc="text-to-image", unit="batch"):
        chunk = scenes[start:start + batch]
        gens = [torch.Generator().manual_seed(seed * 100_003 + start + k) for k in range(len(chunk))]
        images = t2i([s.caption() for s in chunk], num_inference_steps=steps, guidance_scale=guidance,
                     generator=gens, height=64, width=64).images
        objs = judge.classify_regions(images)
        bgs = judge.classify_backgrounds(images)
        for scene, image, o, b in zip(chunk, images, objs, bgs):
            truth, bg = scene.objects[0], scene.background
            samples.append((image, scene.caption(), {
                "shape": o["shape"] == truth.shape, "color": o["color"] == truth.color,
                "pattern": b["pattern"] == bg.pattern, "bg_color": b["color"] == bg.color}))
    share = {k: float(np.mean([v[k] for _, _, v in samples])) for k in ("shape", "color", "pattern", "bg_color")}
    share["shape_and_color"] = float(np.mean([v["shape"] and v["color"] for _, _, v in samples]))
    share["everything"] = float(np.mean([all(v.values()) for _, _, v in samples]))
    by_shape = {}
    for scene, (_, _, v) in zip(scenes, samples):
        by_shape.setdefault(scene.objects[0].shape, []).append(v["shape"])
    share["shape_by_prompted_shape"] = {k: float(np.mean(by_shape[k])) for k in world.SHAPES if k in by_shape}
    return {"samples": n, "steps": steps, "guidance": guidance, **share}, samples


def measure_edits(pipe, scorer, judge, tasks, params: EditParams):
    """Run every task with `params` (prompt = the task's); -> (summary, rows [(task, results, verdicts)])."""
    rows, seconds = [], 0.0
    for i, task in enumerate(tqdm(tasks, desc="edits", unit="task")):
        p = dataclasses.replace(params, prompt=task.prompt, seed=params.seed + 1000 * i,
                                invert_mask=False)
        t0 = time.perf_counter()
        results = run_edit(pipe, task.image, task.mask_image(), p, scorer)
        seconds += time.perf_counter() - t0
        verdicts = judge.judge_edits([r.image for r in results], [task] * len(results))
        rows.append((task, results, verdicts))
    summary = {"tasks": len(tasks), "results_per_task": params.num_images, "steps": params.num_inference_steps,
               "guidance": params.guidance_scale, "skip_fraction": params.skip_fraction,
               "background_noise": params.background_noise, "latent_mask_mode": params.latent_mask_mode,
               "reconstruction": params.reconstruction,
               "background_weight": params.reconstruction_background_weight,
               "seconds_per_task": round(seconds / max(1, len(tasks)), 2)}
    for kind in sorted({t.kind for t in tasks}) + ["all"]:
        sel = [r for r in rows if kind == "all" or r[0].kind == kind]
        all_ok = [v["correct"] for _, _, vs in sel for v in vs]
        best_ok = [vs[0]["correct"] for _, _, vs in sel]  # results come CLIP-ranked, best first
        any_ok = [any(v["correct"] for v in vs) for _, _, vs in sel]
        psnrs = [r.metrics["background_psnr"] for _, rs, _ in sel for r in rs]  # run_edit measured it
        summary[kind] = {"tasks": len(sel), "all_results": float(np.mean(all_ok)),
                         "best_of_n": float(np.mean(best_ok)), "any_of_n": float(np.mean(any_ok)),
                         "background_psnr_mean": float(np.mean(psnrs)),
                         "background_psnr_min": float(np.min(psnrs)),
                         "background_psnr_at_least_35": float(np.mean(np.asarray(psnrs) >= 35))}
    return summary, rows


def t2i_sheet(samples, count: int = 24):
    images = [im for im, _, _ in samples[:count]]
    labels = [("ok " if v["shape"] and v["color"] else "x ") + cap.split(" on ")[0] for _, cap, v in samples[:count]]
    return make_grid(images, labels, tile=SHEET_TILE, columns=8)


def edits_sheet(rows, count: int = 8):
    images, labels = [], []
    for task, results, verdicts in rows[:count]:
        images += [task.image, task.mask_image()]
        labels += [task.prompt[:20], task.kind]
        for r, v in zip(results, verdicts):
            images.append(r.image)
            labels.append(f"{'ok' if v['correct'] else 'x'} {r.score:.2f}" if r.score is not None else "")
    return make_grid(images, labels, tile=SHEET_TILE, columns=2 + len(rows[0][1]))


def missed_sheet(rows, count: int = 16):
    """Like edits_sheet, for the tasks whose best-ranked result is wrong (None when there are none)."""
    missed = [(i, row) for i, row in enumerate(rows) if not row[2][0]["correct"]][:count]
    if not missed:
        return None
    sheet = edits_sheet([row for _, row in missed], count)
    draw = PIL.ImageDraw.Draw(sheet)
    for line, (i, _) in enumerate(missed):  # the task's index, for edits.jsonl and edits-results/
        draw.text((4, line * (SHEET_TILE + LABEL_HEIGHT) + 4), f"task {i}", fill="white",
                  stroke_width=2, stroke_fill="black")
    return sheet


def task_lines(rows) -> list[dict]:
    """One JSON-ready dict per task: prompt, kind and each result (best first) with its verdict."""
    return [{"task": i, "kind": task.kind, "prompt": task.prompt,
             "results": [{"seed": r.seed, "score": r.score, "correct": bool(v["correct"]),
                          "background_psnr": r.metrics["background_psnr"]}
                         for r, v in zip(results, verdicts)]}
            for i, (task, results, verdicts) in enumerate(rows)]


def write_rows(out: Path, name: str, rows, save_results: bool) -> None:
    """edits.jsonl (every task), the missed sheet and, if asked, every result image (see the module doc)."""
    lines = [json.dumps(line, allow_nan=False) for line in json_safe(task_lines(rows))]
    (out / f"{name}.jsonl").write_text("".join(line + "\n" for line in lines))
    sheet = missed_sheet(rows)
    if sheet is not None:
        sheet.save(out / f"{name}-missed.png")
    if save_results:
        folder = out / f"{name}-results"
        folder.mkdir(exist_ok=True)
        for i, (_, results, _) in enumerate(rows):
            for rank, r in enumerate(results):
                save_png_atomic(r.image, folder / f"{i:03d}-{rank + 1}.png", overwrite=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="diffusers folder (default: the bundled model)")
    p.add_argument("--clip", default=None, help="CLIPModel folder that ranks the results (default: the model's clip/)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--t2i", type=int, default=240, help="text-to-image samples (0 skips)")
    p.add_argument("--edits", type=int, default=60, help="object edit tasks (0 skips)")
    p.add_argument("--background-edits", type=int, default=0, help="background edit tasks (inverted masks)")
    p.add_argument("--num-images", type=int, default=4)
    p.add_argument("--t2i-steps", type=int, default=50, help="diffusion steps of text-to-image")
    p.add_argument("--t2i-guidance", type=float, default=7.5, help="guidance scale of text-to-image")
    p.add_argument("--steps", type=int, default=None,
                   help="diffusion steps of edits (default: the model's recommended number, else 50)")
    p.add_argument("--guidance", type=float, default=None,
                   help="guidance scale of edits (default: the model's recommended one, else 7.5)")
    p.add_argument("--guidance-cutoff", type=float, default=None,
                   help="share of the kept steps with guidance (default: the model's recommended one, else 1)")
    p.add_argument("--skip-fraction", type=float, default=None,
                   help="skipped fraction of the schedule (default: the model's recommended one, else 0.25)")
    p.add_argument("--background-noise", choices=get_args(BackgroundNoise), default=None,
                   help="background noise of the blend (default: the model's recommended one, else fixed)")
    p.add_argument("--latent-mask-mode", choices=get_args(LatentMaskMode), default=None,
                   help="mask downsampling of edits (default: the model's recommended one, else any)")
    p.add_argument("--reconstruction", default="decoder")
    p.add_argument("--paper-settings", action="store_true",
                   help="edit with EditParams' defaults (the paper's), not the model's recommended settings")
    p.add_argument("--background-weight", type=float, default=None,
                   help="decoder reconstruction's background weight (default: the model's recommended one, else 100)")
    p.add_argument("--paste-outside", action="store_true",
                   help="paste the input back outside the mask after decoder reconstruction, as bld edit does; "
                        "off (default): the raw decoding is judged and its background PSNR reported")
    p.add_argument("--save-results", action="store_true", help="write every edit result to OUT/edits-results/")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    model = args.model or default_model()
    pipe = load_pipeline(model, device="cpu", dtype="float32")
    pipe.set_progress_bar_config(disable=True)
    scorer = load_scorer(args.clip, model, torch.device("cpu"))
    judge = load_judge()
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {"model": model, "args": {k: str(v) for k, v in vars(args).items()}}
    t0 = time.perf_counter()
    if args.t2i:
        report["text_to_image"], samples = measure_text_to_image(pipe, judge, args.t2i, args.seed, args.t2i_steps,
                                                                 args.t2i_guidance)
        t2i_sheet(samples).save(args.out / "t2i.png")
    given = {"num_inference_steps": args.steps, "guidance_scale": args.guidance, "skip_fraction": args.skip_fraction,
             "guidance_cutoff": args.guidance_cutoff,
             "background_noise": args.background_noise, "latent_mask_mode": args.latent_mask_mode,
             "reconstruction_background_weight": args.background_weight}
    recommended = {} if args.paper_settings else model_edit_defaults(model)
    params = EditParams.from_dict({"guidance_scale": pipe.default_guidance_scale, **recommended,
                                   **{k: v for k, v in given.items() if v is not None},
                                   "prompt": "", "num_images": args.num_images, "seed": args.seed,
                                   "reconstruction": args.reconstruction, "paste_outside": args.paste_outside})
    report["edit_params"] = params.to_dict()
    for name, n, kinds in (("edits", args.edits, ("add", "replace")),
                           ("background_edits", args.background_edits, ("background",))):
        if n:
            report[name], rows = measure_edits(pipe, scorer, judge, edit_tasks(n, args.seed + (name != "edits"), kinds),
                                               params)
            edits_sheet(rows).save(args.out / f"{name}.png")
            write_rows(args.out, name, rows, args.save_results)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print(f"wrote {args.out}/report.json and contact sheets", file=sys.stderr)


if __name__ == "__main__":
    main()
