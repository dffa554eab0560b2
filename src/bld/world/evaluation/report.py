"""The report folder: report.md (tables ready to paste), PNG plots and example grids.

report.json and results.jsonl are written by the runner; this module turns the summary into text and
pictures: `write_all` (plots and grids, returns their paths) and `markdown` (report.md).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import PIL.Image

from ...grid import make_grid

MAIN_ORDER = ("bld", "bld-nearest", "sdedit-paste", "blend-once", "diffusers-inpaint")
RECON_ORDER = ("recon-none", "recon-pixel", "recon-poisson", "recon-latent", "recon-decoder")
THIN_ORDER = ("thin-bld", "thin-bld-shrink", "thin-nearest", "thin-nearest-shrink")
LABEL_CHARS = 21  # what fits under a 128 px tile in PIL's default font


# ----------------------------------------------------------------------------------------------- formatting

def _num(value) -> float:
    if value is None:
        return math.nan
    if isinstance(value, str):
        return math.inf if value == "inf" else -math.inf if value == "-inf" else math.nan
    return float(value)


def pct(value, ci=None) -> str:
    v = _num(value)
    if math.isnan(v):
        return "n/a"
    text = f"{100 * v:.1f}%"
    if ci is not None and not any(math.isnan(_num(c)) for c in ci):
        text += f" [{100 * _num(ci[0]):.0f}, {100 * _num(ci[1]):.0f}]"
    return text


def fixed(value, digits: int = 2) -> str:
    v = _num(value)
    if math.isnan(v):
        return "n/a"
    if math.isinf(v):
        return "∞ (exact)" if v > 0 else "-∞"
    return f"{v:.{digits}f}"


def _diversity(m: dict) -> str:
    if math.isnan(_num(m.get("diversity"))):
        return "n/a"
    return f"{_num(m['diversity']):.3f} ({m['diversity_tasks']})"


def _row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _table(header, rows) -> list[str]:
    return [_row(header), _row(["---"] * len(header)), *(_row(r) for r in rows)]


def _ordered(metrics: dict, order) -> list[str]:
    first = [n for n in order if n in metrics]
    rest = [n for n in metrics if n not in first and not n.startswith(("reference:", "thin-reference:"))]
    refs = [n for n in metrics if n.startswith(("reference:", "thin-reference:"))]
    return first + sorted(rest, key=lambda n: (not n.startswith("bld-skip"), n)) + refs


def main_table(summary: dict) -> list[str]:
    """The paper's Table 1 columns plus image-quality numbers, one row per method on the main suite."""
    metrics, info = summary["metrics"]["main"], summary["methods"]
    header = ["method", "batch precision [95% CI]", "best-result precision [95% CI]", "any correct",
              "diversity (tasks)", "background PSNR (dB)", "background SSIM", "edge ΔE (add/replace)",
              "s / result"]
    rows = []
    for name in _ordered(metrics, MAIN_ORDER):
        m = metrics[name]
        is_ref = info[name]["group"] == "reference"
        rows.append([info[name]["label"], pct(m["batch_precision"], None if is_ref else m["batch_precision_ci"]),
                     pct(m["best_precision"], None if is_ref else m["best_precision_ci"]),
                     pct(m["any_correct"]), "" if is_ref else _diversity(m), fixed(m["background_psnr"], 1),
                     fixed(m["background_ssim"], 4), fixed(m["edge_delta_e_seam"], 2),
                     "" if is_ref else fixed(m["seconds_per_result"], 2)])
    return _table(header, rows)


def kind_table(summary: dict, table: str = "main", order=MAIN_ORDER) -> list[str]:
    metrics, info = summary["metrics"][table], summary["methods"]
    kinds = list(summary["suites"][table]["kinds"])
    header = ["method"] + [f"{k} ({summary['suites'][table]['kinds'][k]}): batch / best" for k in kinds]
    rows = []
    for name in _ordered(metrics, order):
        by = metrics[name].get("by_kind", {})
        rows.append([info[name]["label"]] + [f"{pct(by[k]['batch_precision'])} / {pct(by[k]['best_precision'])}"
                                             if k in by else "n/a" for k in kinds])
    return _table(header, rows)


def partial_table(summary: dict, table: str = "main", order=MAIN_ORDER) -> list[str]:
    """Partial credit: how often the color alone, and the shape or pattern alone, came out right."""
    metrics, info = summary["metrics"][table], summary["methods"]
    header = ["method", "color right", "shape / pattern right", "both (batch precision)"]
    rows = [[info[n]["label"], pct(metrics[n].get("color_precision")), pct(metrics[n].get("form_precision")),
             pct(metrics[n]["batch_precision"])] for n in _ordered(metrics, order)]
    return _table(header, rows)


def reconstruction_table(summary: dict) -> list[str]:
    metrics, info = summary["metrics"]["reconstruction"], summary["methods"]
    header = ["reconstruction", "precision of these results", "background PSNR (dB)", "background SSIM",
              "edge ΔE (add/replace)", "s / result (edit + reconstruction)", "reconstruction alone, s / result"]
    rows = []
    for name in _ordered(metrics, RECON_ORDER):
        m = metrics[name]
        rows.append([info[name]["label"].removeprefix("reconstruction: "), pct(m["batch_precision"]),
                     fixed(m["background_psnr"], 1), fixed(m["background_ssim"], 4),
                     fixed(m["edge_delta_e_seam"], 2), fixed(m["seconds_per_result"], 2), fixed(m.get("reconstruction_seconds_per_result"), 2)])
    return _table(header, rows)


def large_table(summary: dict) -> list[str]:
    metrics, info = summary["metrics"]["large"], summary["methods"]
    header = ["method", "batch precision [95% CI]", "best-result precision [95% CI]", "background PSNR (dB)",
              "edge ΔE", "s / result"]
    rows = [[info[n]["label"], pct(m["batch_precision"], m["batch_precision_ci"]),
             pct(m["best_precision"], m["best_precision_ci"]), fixed(m["background_psnr"], 1),
             fixed(m["edge_delta_e"], 2), fixed(m["seconds_per_result"], 2)] for n, m in metrics.items()]
    return _table(header, rows)


REGIONS_ORDER = ("regions:bld-regions", "regions:sequential", "regions:union-joined",
                 "regions-reference:ground-truth", "regions-reference:source")


def regions_table(summary: dict) -> list[str]:
    metrics, info = summary["metrics"]["regions"], summary["methods"]
    header = ["method", "both right: batch [95% CI]", "both right: best result [95% CI]", "region 1 (left): batch",
              "region 2 (right): batch", "background PSNR outside both (dB)", "s / result"]
    rows = []
    for name in (n for n in REGIONS_ORDER if n in metrics):
        m = metrics[name]
        is_ref = info[name]["group"] == "reference"
        ci = {} if is_ref else m
        rows.append([info[name]["label"], pct(m["batch_precision"], ci.get("batch_precision_ci")),
                     pct(m["best_precision"], ci.get("best_precision_ci")),
                     *(pct(r["batch_precision"], None if is_ref else r["batch_precision_ci"]) for r in m["regions"]),
                     fixed(m["background_psnr"], 1), "" if is_ref else fixed(m["seconds_per_result"], 2)])
    return _table(header, rows)


def regions_comparison_table(summary: dict) -> list[str]:
    rows = [[c["comparison"], _points(c["difference"], c["ci"])] for c in summary["regions_comparisons"]]
    return _table(["paired over tasks", "difference [95% CI]"], rows)


def seams_table(summary: dict) -> list[str]:
    header = ["masking", "batch precision [95% CI]", "edge ΔE", "background PSNR outside the binary mask (dB)",
              "s / result"]
    rows = [[r["masking"], pct(r["batch_precision"], r["batch_precision_ci"]), fixed(r["edge_delta_e"], 2),
             fixed(r["background_psnr"], 1), fixed(r["seconds_per_result"], 2)] for r in summary["soft_seams"]]
    return _table(header, rows)


def _points(difference, ci) -> str:
    d, lo, hi = _num(difference), _num(ci[0]), _num(ci[1])
    return f"{100 * d:+.1f} pts [{100 * lo:+.0f}, {100 * hi:+.0f}]" if not math.isnan(lo) else f"{100 * d:+.1f} pts"


def thin_table(summary: dict) -> list[str]:
    metrics, info = summary["metrics"]["thin"], summary["methods"]
    header = ["method", "batch precision [95% CI]", "best-result precision [95% CI]", "any correct",
              "tasks refused", "background PSNR (dB)", "edge ΔE", "s / result"]
    rows = []
    for name in _ordered(metrics, THIN_ORDER):
        m = metrics[name]
        is_ref = info[name]["group"] == "reference"
        rows.append([info[name]["label"], pct(m["batch_precision"], None if is_ref else m["batch_precision_ci"]),
                     pct(m["best_precision"], None if is_ref else m["best_precision_ci"]), pct(m["any_correct"]),
                     "" if is_ref else m["failed_tasks"], fixed(m["background_psnr"], 1), fixed(m["edge_delta_e"], 2),
                     "" if is_ref else fixed(m["seconds_per_result"], 2)])
    return _table(header, rows)


def skip_table(summary: dict) -> list[str]:
    header = ["skipped fraction", "batch precision [95% CI]", "best-result precision [95% CI]", "s / result"]
    rows = [[f"{s['skip_fraction']:g}", pct(s["batch_precision"], s["batch_precision_ci"]),
             pct(s["best_precision"], s["best_precision_ci"]), fixed(s["seconds_per_result"], 2)]
            for s in summary["skip_sweep"]]
    return _table(header, rows)


def claims_table(summary: dict) -> list[str]:
    header = ["claim", "source", "measured", "difference [95% CI]", "verdict"]
    rows = []
    for c in summary["claims"]:
        d, lo, hi = _num(c["difference"]), _num(c["ci"][0]), _num(c["ci"][1])
        if c["metric"] == "precision":
            diff = _points(c["difference"], c["ci"])
        else:
            diff = f"{d:+.2f} {c['metric']} [{lo:+.2f}, {hi:+.2f}]" if not math.isnan(lo) else f"{d:+.2f} {c['metric']}"
        verdict = c["verdict"] + (f" ({c['note']})" if c.get("note") else "")
        rows.append([c["claim"], c["source"], c["comparison"] + f" ({c['better']} is better)", diff, f"**{verdict}**"])
    return _table(header, rows)


def markdown(summary: dict) -> str:
    st, env = summary["settings"], summary["environment"]
    main, thin = summary["suites"]["main"], summary["suites"]["thin"]
    cal = summary["judge"]["calibration"]
    kinds = lambda s: ", ".join(f"{n} {k}" for k, n in s["kinds"].items()) or "none"
    secs = summary["seconds"]
    lines = [
        "# bld eval report", "",
        f"Command: `{summary['command'] or 'run_eval(...)'}`", "",
        f"Model: `{summary['model']}`; device {env['device']} ({env['torch_threads']} torch threads, torch "
        f"{env['torch']}); bld {summary['bld_version']}; started {summary['started']}; "
        f"{secs['total'] / 60:.1f} min in all ({secs['run'] / 60:.1f} min of edits).", "",
        f"Main suite: {main['tasks']} tasks ({kinds(main)}); thin suite: {thin['tasks']} tasks ({kinds(thin)}). "
        f"Every method makes {st['num_images']} results per task from the same seeds, {st['steps']} "
        f"{st['scheduler']} steps, guidance {st['guidance_scale']:g}, skipping {st['skip_fraction']:g} of the schedule; "
        + ("results are ranked by the model's CLIP (best-result precision takes the top-ranked one). "
           if st["ranked"] else "no CLIP model: results are not ranked (best = first generated). ")
        + f"Judge: the world classifier, not CLIP; a result is correct when it names the target with probability "
          f">= {summary['judge']['min_prob']:g}. Judge on the ideal edits: {pct(cal['main']['ground_truth'])} "
          f"(main), {pct(cal['thin']['ground_truth'])} (thin); on the unedited sources: {pct(cal['main']['source'])}, "
          f"{pct(cal['thin']['source'])}.", "",
    ]
    if summary["metrics"]["main"]:
        lines += ["## Main suite", "", *main_table(summary), "", "### Precision by kind of edit", "",
                  *kind_table(summary), "", "### Partial credit (share of all results)", "",
                  *partial_table(summary), ""]
    if summary["metrics"]["reconstruction"]:
        lines += ["## Background reconstruction", "",
                  f"The top {st['reconstruct_top']} ranked result(s) of each BLD (default) run, finished with each "
                  "method from the same final latents. `pixel` pastes the input outside the mask (exact by "
                  "construction); `poisson` clones the edit into the input; `none`, `latent` and `decoder` decode "
                  "the background through the VAE. Edge ΔE on add/replace tasks measures seams.", "", *reconstruction_table(summary), ""]
    if summary["metrics"]["thin"]:
        lines += ["## Thin masks", "",
                  "Strokes 2-3 px wide; correct = the stroke shows the prompt's color. A refused task is one whose "
                  "mask vanishes at the latent resolution (the pipeline refuses it): its results count as wrong.",
                  "", *thin_table(summary), ""]
    if summary["metrics"].get("large"):
        large = summary["suites"]["large"]
        lines += ["## Large canvas", "",
                  f"{large['tasks']} add/replace tasks, each a 64 px scene placed as one tile of a "
                  f"{large['canvas']} px canvas of other scenes (objects of the usual size, the mask "
                  f"{100 * large['mean_canvas_mask_fraction']:.1f}% of the canvas on average). The judge sees the "
                  "task's own tile of each result; background PSNR is over the whole canvas.", "",
                  *large_table(summary), ""]
    if summary["metrics"].get("regions"):
        lines += ["## Several regions", "",
                  f"{summary['suites']['regions']['tasks']} tasks with two objects to draw, each in its own "
                  "rectangle with its own prompt (kinds in turn add+add, add+replace, replace+replace; region 1 is "
                  "the left one). One edit with two regions, against two edits in turn (one region each, the "
                  "second editing the first's top-ranked result; its seconds are both edits') and one edit of the "
                  "union with the prompts joined. The judge looks at each region with its own target; a result is "
                  "right when both regions are.", "", *regions_table(summary), "",
                  *regions_comparison_table(summary), ""]
    if summary.get("soft_seams"):
        lines += ["## Soft masks: seams against binary masks", "",
                  f"{summary['suites']['seams']['tasks']} add/replace tasks (their own stream), each edited with "
                  "the binary mask, its edge blurred and the mask grown then blurred, with the same seeds and the "
                  "settings above. Edge ΔE across the binary mask's edge (2 px each side); background PSNR outside "
                  "the binary mask, a mean over the results that change it (∞: none does).", "",
                  *seams_table(summary), ""]
    if summary["skip_sweep"]:
        lines += ["## Skipped fraction of the schedule", "", *skip_table(summary), ""]
    if summary["claims"]:
        lines += ["## The paper's claims, measured", "",
                  "Paired over tasks (same tasks and seeds), 95% percentile-bootstrap intervals over tasks. "
                  "*holds*: the interval lies on the claimed side of 0; *contradicted*: on the other side; "
                  "*not shown*: it contains 0.", "", *claims_table(summary), ""]
    plots = summary.get("files", {}).get("plots", [])
    if plots:
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots] + [""]
    grids = summary.get("files", {}).get("examples", [])
    if grids:
        lines += ["Example grids (source, mask, ideal edit, then the results best first, with the judge's verdict): "
                  + ", ".join(f"[{Path(p).stem}]({p})" for p in grids), ""]
    lines += ["## Notes", "",
              "- Precision intervals are bootstraps over tasks; with few tasks they are wide: read differences "
              "inside them as noise.",
              "- Diversity: mean pairwise cosine distance of the judge's features among a task's correct results, "
              "over tasks with at least two correct results (their number in brackets).",
              "- Background PSNR pools the squared error outside the edited region over all results (∞: every result "
              "keeps the input exactly there); SSIM is a mean over results.",
              "- Edge ΔE: mean CIEDE2000 difference across the mask's edge. In the main and reconstruction tables it "
              "is taken on add/replace tasks only, where the edge runs through background the ideal edit keeps, so "
              "it measures seams (compare the ideal edit's row: the texture's own variation). On the thin suite "
              "the ideal edit changes color at the edge, so there it is not a seam measure.",
              "- Seconds per result are wall time on this machine during this run, ranking included; they are "
              "inflated when other work shares the CPU.", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- pictures

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_precision_vs_skip(summary: dict, path: Path) -> Path | None:
    sweep = summary["skip_sweep"]
    if not sweep:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=110)
    x = np.array([s["skip_fraction"] for s in sweep])
    for key, label, marker in (("batch_precision", "batch precision", "o"), ("best_precision", "best-result precision", "s")):
        y = np.array([_num(s[key]) for s in sweep]) * 100
        ci = np.array([[_num(c) for c in s[f"{key}_ci"]] for s in sweep]) * 100
        err = None if np.isnan(ci).any() else np.abs(np.stack([y - ci[:, 0], ci[:, 1] - y]))
        ax.errorbar(x, y, yerr=err, marker=marker, capsize=3, label=label)
    ax.set_xlabel("skipped fraction of the schedule")
    ax.set_ylabel("precision (%)")
    ax.set_ylim(-2, 102)
    ax.set_title("BLD precision against the skipped fraction (95% CI)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_background_psnr(summary: dict, path: Path) -> Path | None:
    metrics = summary["metrics"]["reconstruction"]
    names = [n for n in RECON_ORDER if n in metrics]
    if not names:
        return None
    plt = _plt()
    values = [_num(metrics[n]["background_psnr"]) for n in names]
    finite = [v for v in values if math.isfinite(v)]
    top = (max(finite) if finite else 40.0) + 8
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=110)
    for i, (n, v) in enumerate(zip(names, values)):
        exact = math.isinf(v)
        height = top if exact else (0 if math.isnan(v) else v)
        ax.bar(i, height, color="#bbbbbb" if exact else "#4c72b0", hatch="//" if exact else None)
        ax.text(i, height + 0.5, "exact" if exact else ("n/a" if math.isnan(v) else f"{v:.1f}"), ha="center",
                va="bottom", fontsize=8)
    ax.set_xticks(range(len(names)), [n.removeprefix("recon-") for n in names])
    ax.set_ylabel("background PSNR (dB)")
    ax.set_ylim(0, top + 6)
    ax.set_title("Background PSNR outside the mask, per reconstruction")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _mask_view(task) -> PIL.Image.Image:
    """The source with everything outside the edited region darkened."""
    src = np.asarray(task.image, dtype=np.float32)
    out = np.where(task.mask[..., None], src, src * 0.25)
    return PIL.Image.fromarray(out.astype(np.uint8))


def example_grid(rows, tasks, tile: int = 128) -> PIL.Image.Image:
    """rows: [(task index, images best first, correct flags)] -> a grid image."""
    width = max(len(images) for _, images, _ in rows)
    blank = PIL.Image.new("RGB", tasks[0].image.size, "white")
    images, labels = [], []
    for index, results, correct in rows:
        task = tasks[index]
        images += [task.image, _mask_view(task), task.ground_truth()]
        labels += [f"task {index} {task.kind}"[:LABEL_CHARS], task.prompt[:LABEL_CHARS], "ideal edit"]
        for k in range(width):
            if k < len(results):
                images.append(results[k])
                labels.append(f"#{k + 1} {'correct' if correct[k] else 'wrong'}")
            else:
                images.append(blank)
                labels.append("")
    return make_grid(images, labels, tile=tile, columns=3 + width)


def write_all(out: Path, summary: dict, examples: dict, tasks: dict, n_examples: int) -> dict:
    """Plots and example grids into `out` (`tasks`: suite name -> its tasks); returns their paths relative
    to `out`."""
    files = {"plots": [], "examples": []}
    for fn, filename in ((plot_precision_vs_skip, "precision_vs_skip.png"),
                         (plot_background_psnr, "background_psnr.png")):
        if fn(summary, out / filename) is not None:
            files["plots"].append(filename)
    if n_examples > 0 and examples:
        (out / "examples").mkdir(exist_ok=True)
        for name, rows in examples.items():
            rel = f"examples/{name.replace(':', '-')}.png"
            example_grid(rows, tasks[summary["methods"][name]["suite"]]).save(out / rel)
            files["examples"].append(rel)
    return files
