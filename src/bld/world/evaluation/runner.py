"""`run_eval`: run every method on the fixed suites, judge and measure, write the report folder."""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ... import __version__
from ...image_io import InputError
from ..judge import EDIT_MIN_PROB
from . import large_canvas, regions, report, scoring, soft_seams, suite
from . import methods as M

REPORT_FILES = ("report.md", "report.json", "results.jsonl")
REFERENCE_PREFIXES = {"reference:": "main", "thin-reference:": "thin", "regions-reference:": "regions"}


@dataclass(frozen=True)
class EvalConfig:
    """Sizes and settings of an evaluation run (the defaults are the full run, about an hour on a 2-core CPU
    with the bundled model, 25 minutes of it the large-canvas suite; `quick()` is the smoke-test run)."""

    tasks: int = 72  # main suite: a third each of add, replace, background
    thin_tasks: int = 48  # thin suite: half thin-object, half thin-background
    large_tasks: int = 24  # large-canvas suite: add / replace tasks on a canvas large_scale x 64 px wide
    large_scale: int = 3
    region_tasks: int = 24  # regions suite: two objects, each in its own mask with its own prompt, in one edit
    seam_tasks: int = 24  # soft-seam suite: add / replace tasks edited with a binary, a blurred and a grown mask
    steps: int = 50
    num_images: int = 4
    seed: int = 0
    skip_fraction: float = 0.25
    skip_fractions: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75)  # the skip plot; others than skip_fraction add runs
    shrink: int = 3  # progressive shrinking's dilations on the thin suite
    guidance_scale: float | None = None  # None: the model's default
    reconstruction_steps: int = 75
    reconstruct_top: int = 1  # reconstruction variants run on this many top-ranked results per task
    baselines: bool = True
    examples: int = 6  # tasks per suite shown in the example grids
    min_prob: float = EDIT_MIN_PROB
    bootstrap: int = 1000

    @classmethod
    def quick(cls, **overrides) -> EvalConfig:
        values = dict(tasks=6, thin_tasks=4, large_tasks=2, region_tasks=2, seam_tasks=2, steps=20, examples=3,
                      bootstrap=300)
        values.update(overrides)
        return cls(**values)

    def __post_init__(self):
        sizes = ("tasks", "thin_tasks", "large_tasks", "region_tasks", "seam_tasks")
        for name in (*sizes, "examples", "steps", "num_images", "reconstruction_steps", "reconstruct_top",
                     "bootstrap", "large_scale"):
            low = 0 if name in (*sizes, "examples") else 1
            if getattr(self, name) < low:
                raise ValueError(f"{name}={getattr(self, name)} must be at least {low}")
        if self.num_images > 64:
            raise ValueError(f"num_images={self.num_images} must be at most 64")
        if not any(getattr(self, name) for name in sizes):
            raise ValueError("nothing to evaluate: --tasks, --thin-tasks, --large-tasks, --region-tasks and "
                             "--seam-tasks are all 0")
        if not all(0 <= f < 1 for f in (*self.skip_fractions, self.skip_fraction)):
            raise ValueError("skip fractions must lie in [0, 1)")
        if not 0 <= self.shrink <= 10:
            raise ValueError(f"shrink={self.shrink} must lie in [0, 10]")


def task_seed(seed: int, suite_name: str, index: int) -> int:
    """The edit seed of a task (result k uses seed + k), the same for every method."""
    return int(np.random.default_rng([seed, suite.SUITE_STREAM[suite_name], index, 99]).integers(0, 2**31))


def check_output_folder(out_dir: str | Path, overwrite: bool) -> Path:
    """The report folder; refuses one that already holds a report unless `overwrite` (checked before any work)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"'{out}' exists and is not a folder: choose another -o")
    existing = [out / f for f in REPORT_FILES if (out / f).exists()]
    if existing and not overwrite:
        raise InputError(f"'{existing[0]}' already exists: pass --overwrite or choose another -o")
    return out


@dataclass
class _Collected:
    judged: dict[str, list[scoring.Judged]] = field(default_factory=dict)
    examples: dict[str, list] = field(default_factory=dict)  # method -> [(task index, images)]
    records: list[dict] = field(default_factory=list)
    reconstruction_seconds: dict[str, float] = field(default_factory=dict)


def _collect(col: _Collected, name: str, suite_name: str, index: int, task, judged: scoring.Judged,
             images, n_examples: int) -> None:
    col.judged.setdefault(name, []).append(judged)
    if index < n_examples:
        col.examples.setdefault(name, []).append((index, list(images), list(judged.correct)))
    for k, ok in enumerate(judged.correct):
        col.records.append({
            "suite": suite_name, "task": index, "kind": task.kind, "prompt": task.prompt, "method": name,
            "rank": k + 1, "seed": judged.seeds[k], "score": judged.scores[k], "correct": ok,
            "background_psnr": judged.background_psnr[k], "background_ssim": judged.background_ssim[k],
            "edge_delta_e": judged.edge_delta_e[k], "failed": judged.failed, "judge": judged.answers[k],
            **({"region_correct": judged.region_correct[k]} if judged.region_correct else {})})


def _references(col, judge, tasks, suite_name, config, prefix: str, judge_fn=scoring.judge_and_measure) -> None:
    for i, task in enumerate(tasks):
        for name, image in ((f"{prefix}ground-truth", task.ground_truth()), (f"{prefix}source", task.image)):
            j = judge_fn(judge, i, task, [image], min_prob=config.min_prob)
            _collect(col, name, suite_name, i, task, j, [image], 0)


def run_eval(out_dir: str | Path, config: EvalConfig | None = None, *, model: str | None = None,
             clip_model: str | None = None, device: str = "auto", dtype: str = "auto", overwrite: bool = False,
             progress: bool = True,
             command: str | None = None, pipe=None, scorer=None, judge=None) -> dict:
    """Run the evaluation and write report.md, report.json, results.jsonl, plots and example grids to
    `out_dir`. `pipe`/`scorer`/`judge` may be given (tests); otherwise `model` (default: the bundled one),
    its CLIP (or `clip_model`) and the shipped judge are loaded. Returns the report.json content."""
    from tqdm.auto import tqdm

    config = config or EvalConfig()
    out = check_output_folder(out_dir, overwrite)
    started = time.time()
    t_load = time.perf_counter()
    if pipe is None:
        from ...loading import default_model, load_pipeline, load_scorer

        model = model or default_model()
        pipe = load_pipeline(model, device=device, dtype=dtype, scheduler="ddim")
        if scorer is None:
            scorer = load_scorer(clip_model, model, pipe.device)
    from ...pipelines.stable_diffusion import BlendedLatentDiffusionPipeline

    if not isinstance(pipe, BlendedLatentDiffusionPipeline):
        raise InputError(f"bld eval runs Stable Diffusion 1.x/2.x pipelines, not {type(pipe).__name__}")
    if judge is None:
        from ..judge import load_judge

        judge = load_judge()
    pipe.set_progress_bar_config(disable=True)
    ctx = M.EvalContext(pipe, scorer, steps=config.steps, num_images=config.num_images,
                        guidance_scale=config.guidance_scale, skip_fraction=config.skip_fraction, shrink=config.shrink,
                        reconstruction_steps=config.reconstruction_steps, reconstruct_top=config.reconstruct_top)
    main_tasks = suite.main_suite(config.tasks, config.seed)
    thin_tasks = suite.thin_suite(config.thin_tasks, config.seed)
    main_methods = M.main_methods(config.skip_fractions, config.skip_fraction) if main_tasks else []
    if not config.baselines:
        main_methods = [m for m in main_methods if m.group != "baseline"]
    thin_methods = M.thin_methods(config.shrink) if thin_tasks else []
    large_tasks = large_canvas.large_canvas_suite(config.large_tasks, config.seed, config.large_scale)
    region_tasks = regions.region_suite(config.region_tasks, config.seed)
    seam_tasks = soft_seams.tasks(config.seam_tasks, config.seed)
    load_seconds = time.perf_counter() - t_load

    # warm-up (untimed): the first calls of a pipeline pay for lazy initialisation
    warm = (main_tasks + thin_tasks + [t.tile for t in large_tasks] + [t.region_tasks[0] for t in region_tasks]
            + seam_tasks)[0]
    M.run_bld(dataclasses.replace(ctx, steps=2, num_images=1), warm, 0)

    col = _Collected()
    _references(col, judge, main_tasks, "main", config, "reference:")
    _references(col, judge, thin_tasks, "thin", config, "thin-reference:")
    _references(col, judge, region_tasks, "regions", config, "regions-reference:", regions.judge_regions)
    units = (len(main_tasks) * (len(main_methods) + len(M.RECONSTRUCTIONS)) + len(thin_tasks) * len(thin_methods)
             + len(large_tasks) * len(large_canvas.METHODS) + len(region_tasks) * len(regions.METHODS)
             + len(seam_tasks) * len(soft_seams.MASKINGS))
    bar = tqdm(total=units, desc="bld eval", unit="run", file=sys.stderr, disable=not progress, dynamic_ncols=True)
    t_run = time.perf_counter()
    try:
        for suite_name, tasks, methods in (("main", main_tasks, main_methods), ("thin", thin_tasks, thin_methods)):
            for i, task in enumerate(tasks):
                seed = task_seed(config.seed, suite_name, i)
                for method in methods:
                    bar.set_postfix_str(f"{suite_name} {i + 1}/{len(tasks)} {method.name}", refresh=False)
                    output = method.run(ctx, task, seed)
                    judged = scoring.judge_and_measure(judge, i, task, output.images, scores=output.scores,
                                                       seeds=output.seeds, seconds=output.seconds,
                                                       failed=output.failed, min_prob=config.min_prob)
                    _collect(col, method.name, suite_name, i, task, judged, output.images, config.examples)
                    bar.update()
                    if method.name == "bld":
                        for recon in M.RECONSTRUCTIONS:
                            bar.set_postfix_str(f"{suite_name} {i + 1}/{len(tasks)} reconstruction {recon}",
                                                refresh=False)
                            r = M.reconstruct(ctx, task, output, recon, config.reconstruct_top)
                            judged = scoring.judge_and_measure(judge, i, task, r.images, scores=r.scores,
                                                               seeds=r.seeds, seconds=r.seconds, failed=r.failed,
                                                               min_prob=config.min_prob)
                            name = M.reconstruction_name(recon)
                            _collect(col, name, suite_name, i, task, judged, r.images, config.examples)
                            col.reconstruction_seconds[name] = (col.reconstruction_seconds.get(name, 0.0)
                                                                + r.extra.get("reconstruction_seconds", 0.0))
                            bar.update()

        def run_done(suite_name: str, n: int):
            def done(i: int, name: str) -> None:
                bar.set_postfix_str(f"{suite_name} {i + 1}/{n} {name}", refresh=False)
                bar.update()

            return done

        large_judged = large_canvas.run_large_canvas(ctx, judge, large_tasks,
                                                     lambda i: task_seed(config.seed, "large", i), config.min_prob,
                                                     on_run=run_done("large", len(large_tasks)))
        region_runs = regions.run_region_suite(ctx, judge, region_tasks, lambda i: task_seed(config.seed, "regions", i),
                                               config.min_prob, on_run=run_done("regions", len(region_tasks)))
        for name, runs in region_runs.items():
            for i, (judged, output) in enumerate(runs):
                _collect(col, f"regions:{name}", "regions", i, region_tasks[i], judged, output.images, config.examples)

        def seam_edit(task, i, overrides):
            return M.run_bld(ctx, task, task_seed(config.seed, "seams", i), **overrides).images

        seam_rows = soft_seams.masking_rows(seam_edit, judge, seam_tasks, _draws(len(seam_tasks), config),
                                            config.min_prob, on_run=run_done("seams", len(seam_tasks)))
    finally:
        bar.close()
    run_seconds = time.perf_counter() - t_run

    # summaries, claims, files
    draws = {"main": _draws(len(main_tasks), config), "thin": _draws(len(thin_tasks), config),
             "regions": _draws(len(region_tasks), config)}
    all_methods = {m.name: m for m in main_methods + thin_methods}
    method_info = {name: M.describe_method(m) for name, m in all_methods.items()}
    for recon in M.RECONSTRUCTIONS:
        method_info[M.reconstruction_name(recon)] = {
            "label": f"reconstruction: {recon}", "suite": "main", "group": "reconstruction",
            "description": f"the BLD run's top {config.reconstruct_top} result(s) finished with reconstruction={recon!r}",
            "settings": {"reconstruction": recon}}
    for name, label in regions.METHODS.items():
        method_info[f"regions:{name}"] = {"label": label, "suite": "regions", "group": "regions",
                                          "description": label, "settings": {}}
    for prefix, suite_name in REFERENCE_PREFIXES.items():
        method_info[f"{prefix}ground-truth"] = {"label": "reference: ground truth", "suite": suite_name,
                                                "group": "reference", "description": "the ideal edit", "settings": {}}
        method_info[f"{prefix}source"] = {"label": "reference: unedited source", "suite": suite_name,
                                          "group": "reference", "description": "no edit at all", "settings": {}}
    metrics: dict[str, dict] = {"main": {}, "reconstruction": {}, "thin": {}, "large": {}, "regions": {}}
    large_draws = _draws(len(large_tasks), config)
    for name, judged in large_judged.items():
        if judged:
            label = large_canvas.METHODS[name][0]
            method_info[f"large:{name}"] = {"label": label, "suite": "large", "group": "large",
                                            "description": label, "settings": {}}
            metrics["large"][f"large:{name}"] = scoring.summarize(judged, large_draws)
    for name, judged in col.judged.items():
        info = method_info[name]
        table = "reconstruction" if info["group"] == "reconstruction" else info["suite"]
        summarize = regions.summarize if table == "regions" else scoring.summarize
        metrics[table][name] = summarize(judged, draws[info["suite"]])
        if name in col.reconstruction_seconds:
            metrics[table][name]["reconstruction_seconds_per_result"] = (
                col.reconstruction_seconds[name] / max(1, metrics[table][name]["results"]))
    skip_sweep = []
    for f in sorted(set(config.skip_fractions) | ({config.skip_fraction} if main_methods else set())):
        name = "bld" if abs(f - config.skip_fraction) < 1e-9 else M.skip_method_name(f)
        if name in metrics["main"]:
            m = metrics["main"][name]
            skip_sweep.append({"skip_fraction": f, "method": name, "batch_precision": m["batch_precision"],
                               "batch_precision_ci": m["batch_precision_ci"], "best_precision": m["best_precision"],
                               "best_precision_ci": m["best_precision_ci"],
                               "seconds_per_result": m["seconds_per_result"]})
    claims = scoring.evaluate_claims(col.judged, ranked=scorer is not None, reps=config.bootstrap, seed=config.seed)

    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "bld_version": __version__,
        "command": command,
        "config": {**dataclasses.asdict(config), "skip_fractions": list(config.skip_fractions)},
        "settings": M.settings_record(ctx),
        "model": str(model) if model is not None else None,
        "ranking": "CLIP" if scorer is not None else None,
        "environment": {"device": str(pipe.device), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                        "python": platform.python_version(), "machine": platform.machine(),
                        "processor": platform.processor() or None},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "seconds": {"load": round(load_seconds, 2), "run": round(run_seconds, 2),
                    "total": None},  # filled below, after writing the plots
        "judge": {"min_prob": config.min_prob,
                  "calibration": {s: {"ground_truth": metrics[s].get(f"{p}ground-truth", {}).get("batch_precision"),
                                      "source": metrics[s].get(f"{p}source", {}).get("batch_precision")}
                                  for p, s in REFERENCE_PREFIXES.items()}},
        "suites": {"main": _suite_info(main_tasks), "thin": _suite_info(thin_tasks),
                   "large": {**_suite_info([t.tile for t in large_tasks]),
                             "canvas": large_canvas.TILE * config.large_scale,
                             "mean_canvas_mask_fraction": float(np.mean([t.mask.mean() for t in large_tasks]))
                             if large_tasks else None},
                   "regions": _suite_info(region_tasks, regions.describe), "seams": _suite_info(seam_tasks)},
        "methods": method_info,
        "metrics": metrics,
        "skip_sweep": skip_sweep,
        "claims": claims,
        "regions_comparisons": regions.comparisons(col.judged, config.bootstrap, config.seed),
        "soft_seams": seam_rows,
    }
    files = report.write_all(out, summary, col.examples, {"main": main_tasks, "thin": thin_tasks,
                                                          "regions": region_tasks}, config.examples)
    summary["files"] = files
    summary["seconds"]["total"] = round(time.time() - started, 2)
    with open(out / "results.jsonl", "w") as fh:
        for record in col.records:
            fh.write(json.dumps(_json_safe(record)) + "\n")
    (out / "report.json").write_text(json.dumps(_json_safe(summary), indent=2) + "\n")
    (out / "report.md").write_text(report.markdown(summary))
    return summary


def _draws(n_tasks: int, config: EvalConfig) -> np.ndarray | None:
    return scoring.bootstrap_indices(n_tasks, config.bootstrap, config.seed) if n_tasks > 1 else None


def _suite_info(tasks, describe=suite.describe) -> dict:
    kinds: dict[str, int] = {}
    for t in tasks:
        kinds[t.kind] = kinds.get(t.kind, 0) + 1
    return {"tasks": len(tasks), "kinds": kinds,
            "mean_mask_fraction": float(np.mean([t.mask.mean() for t in tasks])) if tasks else None,
            "items": [describe(t) for t in tasks]}


def _json_safe(value):
    """NaN -> null, +-inf -> "inf"/"-inf", tuples -> lists, numpy scalars -> Python."""
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        value = value.item()
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value
