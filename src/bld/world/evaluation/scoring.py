"""Metrics per method, as in the paper's Table 1 (PAPER.md section 5) plus image-quality numbers.

The judge is the world classifier (`bld.world.judge`), never the CLIP model that ranks the results.

- correct: main tasks follow `Judge.judge_edits` (the object in the mask's box, or the background
  outside the kept rectangle, has the target's classes, each with probability >= min_prob). Thin tasks:
  the stroke shows the target color: the judge's background color head on the image with everything
  but the stroke painted flat in the stroke's mean color (`classify_backgrounds` with the stroke's
  complement as the kept mask), probability >= min_prob.
- batch precision: share of all results judged correct (a task's results count equally).
- best-result precision: share of tasks whose first result (the CLIP-ranked best, or the first
  generated when unranked) is correct.
- any correct: share of tasks with at least one correct result (what a perfect ranker would reach).
- partial credit: color precision, the share of results whose judged color is the target's, and form
  precision, the share whose shape (object tasks) or pattern (background tasks) is, each with the
  same probability threshold (thin tasks have no form).
- diversity: mean over tasks with two or more correct results of the mean pairwise cosine distance
  (1 - cosine similarity) between the correct results' judge features (`Judge.region_features`: the
  pooled penultimate features on the mask's box). 0 for identical results.
- background PSNR: 10 log10(1 / MSE) of the background MSE (outside the edited region, `bld.ops.metrics`)
  pooled over all results, so a method that keeps the background exactly reads inf; background SSIM:
  mean over results. Edge color difference (CIEDE2000 across the mask's edge, `bld.ops.metrics`): mean over
  results, and `edge_delta_e_seam` over the add and replace tasks only, whose mask edge runs through
  background that the ideal edit leaves unchanged, so that a color jump across it is a seam (on
  background and thin tasks the ideal edit itself changes color at the edge).
- seconds per result: wall time of the method's calls over the number of results.

Confidence intervals are percentile bootstraps over tasks (paired between methods: same task draws).
Results of a method that refused a task (a mask that vanished at the latent resolution) count as
incorrect and are left out of the image-quality numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ...ops import metrics as image_metrics
from ..judge import EDIT_MIN_PROB, Judge
from ..scenes import EditTask
from .suite import THIN_KINDS

SEAM_KINDS = ("add", "replace")  # tasks whose mask edge runs through background the ideal edit keeps


@dataclass
class Judged:
    """One method's results on one task, judged and measured (lists in ranked order)."""

    task: int
    kind: str
    correct: list[bool]
    features: torch.Tensor  # (n, D)
    scores: list[float | None]
    seeds: list[int]
    seconds: float
    failed: str | None = None
    background_psnr: list[float] = field(default_factory=list)
    background_ssim: list[float] = field(default_factory=list)
    edge_delta_e: list[float] = field(default_factory=list)
    answers: list[dict] = field(default_factory=list)
    color_correct: list[bool] = field(default_factory=list)  # the target's color, judged as sure as `correct`
    form_correct: list[bool | None] = field(default_factory=list)  # its shape (objects) or pattern; None: thin
    region_correct: list[list[bool]] = field(default_factory=list)  # per result, each region's verdict (regions suite)


def judge_thin(judge: Judge, images, tasks, min_prob: float = EDIT_MIN_PROB) -> list[dict]:
    """Thin tasks: is the stroke the target color? -> per image {"correct", "kind", "color", "color_prob", "features"}."""
    images, tasks = list(images), list(tasks)
    answers = judge.classify_backgrounds(images, [~t.mask for t in tasks])
    feats = judge.region_features(images, [t.mask for t in tasks])
    out = []
    for a, t, f in zip(answers, tasks, feats):
        ok = a["color"] == t.target.color and a["color_prob"] >= min_prob
        out.append({"correct": bool(ok), "kind": t.kind, "color": a["color"], "color_prob": a["color_prob"],
                    "features": f})
    return out


def judge_images(judge: Judge, images, task: EditTask, min_prob: float = EDIT_MIN_PROB) -> list[dict]:
    """Judge results of one task with the rule of its suite."""
    images = list(images)
    if task.kind in THIN_KINDS:
        return judge_thin(judge, images, [task] * len(images), min_prob)
    return judge.judge_edits(images, [task] * len(images), min_prob)


def _answer_record(a: dict) -> dict:
    keys = ("shape", "color", "pattern", "shape_prob", "color_prob", "pattern_prob")
    return {k: (round(a[k], 4) if isinstance(a[k], float) else a[k]) for k in keys if k in a}


def judge_and_measure(judge: Judge, task_index: int, task: EditTask, images, *, scores=None, seeds=None,
                      seconds: float = 0.0, failed: str | None = None,
                      min_prob: float = EDIT_MIN_PROB) -> Judged:
    """Judge `images` (best first) against `task` and measure the background and the seam of each."""
    images = list(images)
    answers = judge_images(judge, images, task, min_prob)
    correct = [bool(a["correct"]) and not failed for a in answers]
    judged = Judged(task_index, task.kind, correct, torch.stack([a["features"] for a in answers]),
                    list(scores) if scores is not None else [None] * len(images),
                    list(seeds) if seeds is not None else [None] * len(images), seconds, failed,
                    answers=[_answer_record(a) for a in answers])
    target = task.target
    for a in answers:
        judged.color_correct.append(not failed and a["color"] == target.color and a["color_prob"] >= min_prob)
        if task.kind in THIN_KINDS:
            judged.form_correct.append(None)
        else:
            key = "pattern" if task.kind == "background" else "shape"
            judged.form_correct.append(not failed and a[key] == getattr(target, key) and a[f"{key}_prob"] >= min_prob)
    for image in images:
        judged.background_psnr.append(image_metrics.background_psnr(task.image, image, task.mask))
        judged.background_ssim.append(image_metrics.background_ssim(task.image, image, task.mask))
        judged.edge_delta_e.append(image_metrics.edge_color_difference(image, task.mask))
    return judged


# ----------------------------------------------------------------------------------------------- aggregates

def pairwise_cosine_distance(features: torch.Tensor) -> float:
    """Mean over pairs of 1 - cosine similarity of the rows of `features`; NaN with fewer than 2 rows."""
    n = features.shape[0]
    if n < 2:
        return math.nan
    f = F.normalize(features.float(), dim=-1)
    sim = f @ f.T
    iu = torch.triu_indices(n, n, offset=1)
    return float((1.0 - sim[iu[0], iu[1]]).clamp_min(0.0).mean())


def diversity(judged: list[Judged]) -> tuple[float, int]:
    """(mean over tasks with >= 2 correct results of their pairwise distance, number of such tasks)."""
    values = []
    for j in judged:
        keep = [k for k, c in enumerate(j.correct) if c]
        if len(keep) >= 2:
            values.append(pairwise_cosine_distance(j.features[keep]))
    return (float(np.mean(values)) if values else math.nan), len(values)


def psnr_from_psnrs(psnrs: list[float]) -> float:
    """PSNR of the mean MSE over results whose per-result PSNRs (peak 1) are given; inf when all are exact."""
    values = [p for p in psnrs if not math.isnan(p)]
    if not values:
        return math.nan
    mse = float(np.mean([0.0 if math.isinf(p) else 10 ** (-p / 10) for p in values]))
    return math.inf if mse == 0.0 else 10 * math.log10(1.0 / mse)


def per_task_arrays(judged: list[Judged]) -> dict[str, np.ndarray]:
    """Per task: fraction correct, first result correct, any correct (in task order)."""
    judged = sorted(judged, key=lambda j: j.task)
    return {"fraction": np.array([np.mean(j.correct) for j in judged], dtype=float),
            "top1": np.array([float(j.correct[0]) for j in judged]),
            "any": np.array([float(any(j.correct)) for j in judged])}


def bootstrap_indices(n_tasks: int, reps: int, seed: int = 0) -> np.ndarray:
    """(reps, n_tasks) task indices drawn with replacement; shared between methods for paired intervals."""
    return np.random.default_rng([seed, 7]).integers(0, n_tasks, size=(reps, n_tasks))


def mean_ci(values: np.ndarray, draws: np.ndarray | None, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the percentile bootstrap interval of the mean over tasks."""
    values = np.asarray(values, dtype=float)
    mean = float(values.mean()) if len(values) else math.nan
    if draws is None or len(values) < 2:
        return mean, math.nan, math.nan
    boot = values[draws].mean(axis=1)
    a = (1 - level) / 2
    return mean, float(np.quantile(boot, a)), float(np.quantile(boot, 1 - a))


def _finite_mean(values) -> float:
    v = [x for x in values if not math.isnan(x)]
    return float(np.mean(v)) if v else math.nan


def summarize(judged: list[Judged], draws: np.ndarray | None = None) -> dict:
    """Every metric of one method over its tasks (see the module docstring)."""
    if not judged:
        return {}
    arrays = per_task_arrays(judged)
    n_results = sum(len(j.correct) for j in judged)
    batch, batch_lo, batch_hi = mean_ci(arrays["fraction"], draws)
    best, best_lo, best_hi = mean_ci(arrays["top1"], draws)
    div, div_n = diversity(judged)
    ok = [j for j in judged if not j.failed]
    kinds = sorted({j.kind for j in judged})
    return {
        "tasks": len(judged), "results": n_results,
        "batch_precision": batch, "batch_precision_ci": [batch_lo, batch_hi],
        "best_precision": best, "best_precision_ci": [best_lo, best_hi],
        "any_correct": float(arrays["any"].mean()),
        "color_precision": _finite_mean([float(c) for j in judged for c in j.color_correct]),
        "form_precision": _finite_mean([float(c) for j in judged for c in j.form_correct if c is not None]),
        "diversity": div, "diversity_tasks": div_n,
        "background_psnr": psnr_from_psnrs([p for j in ok for p in j.background_psnr]),
        "background_ssim": _finite_mean([s for j in ok for s in j.background_ssim]),
        "edge_delta_e": _finite_mean([e for j in ok for e in j.edge_delta_e]),
        "edge_delta_e_seam": _finite_mean([e for j in ok if j.kind in SEAM_KINDS for e in j.edge_delta_e]),
        "seconds_per_result": float(sum(j.seconds for j in judged) / max(1, n_results)),
        "failed_tasks": sum(1 for j in judged if j.failed),
        "by_kind": {k: {"tasks": sum(1 for j in judged if j.kind == k),
                        "batch_precision": float(np.mean([np.mean(j.correct) for j in judged if j.kind == k])),
                        "best_precision": float(np.mean([j.correct[0] for j in judged if j.kind == k]))}
                    for k in kinds},
    }


def region_rates(judged: list[Judged], region: int, draws: np.ndarray | None = None) -> dict:
    """One region's batch and best-result precision (with intervals) on the regions suite."""
    judged = sorted(judged, key=lambda j: j.task)
    fraction = np.array([np.mean([flags[region] for flags in j.region_correct]) for j in judged])
    top1 = np.array([float(j.region_correct[0][region]) for j in judged])
    batch, batch_lo, batch_hi = mean_ci(fraction, draws)
    best, best_lo, best_hi = mean_ci(top1, draws)
    return {"batch_precision": batch, "batch_precision_ci": [batch_lo, batch_hi],
            "best_precision": best, "best_precision_ci": [best_lo, best_hi]}


def paired_difference(a: np.ndarray, b: np.ndarray, draws: np.ndarray | None) -> dict:
    """Mean of a - b over tasks with its paired bootstrap interval."""
    mean, lo, hi = mean_ci(np.asarray(a, float) - np.asarray(b, float), draws)
    return {"difference": mean, "ci": [lo, hi]}


def verdict(diff: dict, *, higher_is_better: bool = True) -> str:
    """'holds' when the interval lies on the claimed side of 0, 'contradicted' when on the other side,
    'not shown' when it contains 0 (or cannot be computed)."""
    lo, hi = diff["ci"]
    if math.isnan(lo) or math.isnan(hi):
        return "not shown"
    if not higher_is_better:
        lo, hi = -hi, -lo
    if lo > 0:
        return "holds"
    if hi < 0:
        return "contradicted"
    return "not shown"


# ----------------------------------------------------------------------------------------------- claims

def _per_task(judged: list[Judged], attribute: str, kinds=None) -> np.ndarray:
    """Per task (in task order) the mean of a per-result measure over its results; NaN for refused tasks,
    tasks of other `kinds`, and where no value is finite. attribute "background_rmse": the root mean
    squared background error in 0-255 levels, from the background PSNR (0 when exact)."""
    out = []
    for j in sorted(judged, key=lambda j: j.task):
        if attribute == "background_rmse":
            values = [255 * math.sqrt(10 ** (-p / 10)) if not math.isinf(p) else 0.0
                      for p in j.background_psnr if not math.isnan(p)]
        else:
            values = [v for v in getattr(j, attribute) if math.isfinite(v)]
        skip = j.failed or not values or (kinds is not None and j.kind not in kinds)
        out.append(math.nan if skip else float(np.mean(values)))
    return np.array(out)


def _paired_finite(a: np.ndarray, b: np.ndarray, reps: int, seed: int) -> dict:
    keep = ~(np.isnan(a) | np.isnan(b))
    draws = bootstrap_indices(int(keep.sum()), reps, seed) if keep.sum() >= 2 else None
    out = paired_difference(a[keep], b[keep], draws)
    out["tasks"] = int(keep.sum())
    return out


def _claim(claim: str, source: str, comparison: str, metric: str, diff: dict, higher_is_better: bool) -> dict:
    return {"claim": claim, "source": source, "comparison": comparison, "metric": metric,
            "better": "higher" if higher_is_better else "lower", **diff,
            "verdict": verdict(diff, higher_is_better=higher_is_better)}


def evaluate_claims(judged: dict[str, list[Judged]], *, ranked: bool, reps: int = 1000, seed: int = 0) -> list[dict]:
    """The paper's claims (and the project's own latent-mask choice) as paired comparisons over tasks.
    Only comparisons whose methods were all run appear."""
    claims = []

    def have(*names):
        return all(judged.get(n) for n in names)

    def precision_diff(a, b, key="fraction"):
        x, y = per_task_arrays(judged[a])[key], per_task_arrays(judged[b])[key]
        return paired_difference(x, y, bootstrap_indices(len(x), reps, seed) if len(x) >= 2 else None)

    if have("bld"):
        arrays = per_task_arrays(judged["bld"])
        diff = paired_difference(arrays["top1"], arrays["fraction"],
                                 bootstrap_indices(len(arrays["top1"]), reps, seed) if len(arrays["top1"]) >= 2 else None)
        c = _claim("CLIP ranking helps: the top-ranked result is correct more often than a random one",
                   "Table 1, section 4", "BLD best-result precision - batch precision", "precision", diff, True)
        if not ranked:
            c["verdict"], c["note"] = "not measurable", "no CLIP scorer: results were not ranked"
        claims.append(c)
    # pixel pasting and Poisson cloning keep the input exactly outside the mask, so the background claim
    # compares the methods that decode it; Poisson's cost in the paper is a color shift inside the mask
    for other in ("recon-none", "recon-latent"):
        if have("recon-decoder", other):
            diff = _paired_finite(_per_task(judged["recon-decoder"], "background_rmse"),
                                  _per_task(judged[other], "background_rmse"), reps, seed)
            claims.append(_claim("decoder reconstruction preserves the background best (of the methods that "
                                 "decode it; pixel and poisson keep the input exactly there)", "section 2",
                                 f"background RMSE: decoder - {other.removeprefix('recon-')}", "levels (0-255)",
                                 diff, False))
    if have("recon-decoder", "recon-poisson"):
        claims.append(_claim("Poisson blending shifts the edit's colors; decoder reconstruction keeps them",
                             "section 2", "precision of the reconstructed results: decoder - poisson", "precision",
                             precision_diff("recon-decoder", "recon-poisson"), True))
    if have("recon-decoder", "recon-pixel"):
        diff = _paired_finite(_per_task(judged["recon-decoder"], "edge_delta_e", SEAM_KINDS),
                              _per_task(judged["recon-pixel"], "edge_delta_e", SEAM_KINDS), reps, seed)
        claims.append(_claim("decoder reconstruction avoids the seams of pasting", "section 2",
                             "edge ΔE on add/replace tasks: decoder - pixel", "CIEDE2000", diff, False))
    for shrunk, plain, mode in (("thin-bld-shrink", "thin-bld", "'any' latent mask"),
                                ("thin-nearest-shrink", "thin-nearest", "nearest latent mask, the paper's")):
        if have(shrunk, plain):
            claims.append(_claim(f"progressive shrinking rescues thin masks ({mode})", "section 3",
                                 f"thin suite batch precision: {shrunk} - {plain}", "precision",
                                 precision_diff(shrunk, plain), True))
    for base in ("sdedit-paste", "blend-once"):
        if have("bld", base):
            claims.append(_claim("blending at every step beats regenerating and pasting", "section 1",
                                 f"batch precision: bld - {base}", "precision", precision_diff("bld", base), True))
            diff = _paired_finite(_per_task(judged["bld"], "edge_delta_e", SEAM_KINDS),
                                  _per_task(judged[base], "edge_delta_e", SEAM_KINDS), reps, seed)
            claims.append(_claim("blending at every step leaves weaker seams than pasting a regenerated image",
                                 "section 1", f"edge ΔE on add/replace tasks: bld - {base}", "CIEDE2000", diff,
                                 False))
    if have("thin-bld", "thin-nearest"):
        claims.append(_claim("(this project) the 'any' latent mask keeps thin masks that nearest drops",
                             "README, Thin masks", "thin suite batch precision: thin-bld - thin-nearest",
                             "precision", precision_diff("thin-bld", "thin-nearest"), True))
    return claims
