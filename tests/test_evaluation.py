"""`bld eval`: the suites, the methods, the metrics, and the report's structure (tiny components)."""

import json
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from bld.apps.cli import main
from bld.world.evaluation import methods as M
from bld.world.evaluation import regions, scoring, soft_seams, suite
from bld.world.judge import load_judge


@pytest.fixture(scope="module")
def judge():
    return load_judge()


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    from bld.testing.tiny_clip import tiny_clip

    return tiny_clip(tmp_path_factory.mktemp("clip"))


def judged(correct, features=None, task=0, kind="add", psnr=None):
    n = len(correct)
    feats = features if features is not None else torch.randn(n, 8, generator=torch.Generator().manual_seed(task))
    return scoring.Judged(task, kind, list(correct), feats, [None] * n, list(range(n)), 1.0,
                          background_psnr=psnr if psnr is not None else [math.inf] * n,
                          background_ssim=[1.0] * n, edge_delta_e=[2.0] * n)


# ----------------------------------------------------------------------------------------------- metrics

def test_batch_precision_is_the_share_of_correct_results_and_best_takes_the_first():
    tasks = [judged([True, False, False, False], task=0), judged([False, True, True, True], task=1)]
    m = scoring.summarize(tasks)
    assert m["batch_precision"] == pytest.approx(4 / 8)
    assert m["best_precision"] == pytest.approx(0.5)  # only task 0's top-ranked result is correct
    assert m["any_correct"] == 1.0
    assert m["results"] == 8 and m["tasks"] == 2
    assert m["seconds_per_result"] == pytest.approx(2 / 8)


def test_best_precision_follows_the_ranking_not_the_best_result():
    m = scoring.summarize([judged([False, True], task=0), judged([False, True], task=1)])
    assert m["best_precision"] == 0.0 and m["batch_precision"] == 0.5 and m["any_correct"] == 1.0


def test_diversity_is_zero_for_identical_results_and_positive_otherwise():
    same = torch.ones(4, 8)
    assert scoring.diversity([judged([True] * 4, same)]) == (pytest.approx(0.0, abs=1e-6), 1)
    different = torch.eye(4, 8)
    value, n = scoring.diversity([judged([True] * 4, different)])
    assert value == pytest.approx(1.0) and n == 1  # orthogonal features: cosine distance 1
    # only correct results count, and a task needs two of them
    value, n = scoring.diversity([judged([True, False, False, False], different)])
    assert math.isnan(value) and n == 0
    value, _ = scoring.diversity([judged([True, True, False, False], torch.cat([same[:2], different[2:]]))])
    assert value == pytest.approx(0.0, abs=1e-6)


def test_background_psnr_pools_the_error_and_reads_inf_only_when_exact():
    assert scoring.psnr_from_psnrs([math.inf, math.inf]) == math.inf
    assert scoring.psnr_from_psnrs([20.0, 20.0]) == pytest.approx(20.0)
    assert scoring.psnr_from_psnrs([20.0, math.inf]) == pytest.approx(10 * math.log10(2 / 0.01))
    assert math.isnan(scoring.psnr_from_psnrs([]))


def test_refused_tasks_count_as_wrong_and_leave_the_image_numbers():
    ok = judged([True, True], psnr=[20.0, 20.0])
    refused = judged([False, False], task=1, psnr=[math.inf, math.inf])
    refused.failed = "mask vanishes"
    m = scoring.summarize([ok, refused])
    assert m["batch_precision"] == 0.5 and m["failed_tasks"] == 1
    assert m["background_psnr"] == pytest.approx(20.0)


def test_bootstrap_interval_and_verdicts():
    values = np.array([0.0, 1.0] * 10)
    draws = scoring.bootstrap_indices(len(values), 200)
    mean, lo, hi = scoring.mean_ci(values, draws)
    assert mean == 0.5 and lo < 0.5 < hi
    same = scoring.paired_difference(values, values, draws)
    assert same["difference"] == 0 and same["ci"] == [0, 0] and scoring.verdict(same) == "not shown"
    better = scoring.paired_difference(values + 1, values, draws)
    assert scoring.verdict(better) == "holds" and scoring.verdict(better, higher_is_better=False) == "contradicted"


def test_claims_compare_methods_over_the_same_tasks():
    bld = [judged([True, True, False, False], task=i) for i in range(6)]
    paste = [judged([False, False, False, False], task=i) for i in range(6)]
    claims = scoring.evaluate_claims({"bld": bld, "sdedit-paste": paste}, ranked=True, reps=200)
    by = {c["comparison"]: c for c in claims}
    assert by["batch precision: bld - sdedit-paste"]["difference"] == pytest.approx(0.5)
    assert by["batch precision: bld - sdedit-paste"]["verdict"] == "holds"
    ranking = by["BLD best-result precision - batch precision"]
    assert ranking["difference"] == pytest.approx(0.5) and ranking["verdict"] == "holds"
    unranked = scoring.evaluate_claims({"bld": bld}, ranked=False, reps=50)
    assert unranked[0]["verdict"] == "not measurable"


def test_reconstruction_claims_leave_exact_methods_out_of_the_background_comparison():
    kinds = ("add", "replace")
    decoder = [judged([True], task=i, kind=kinds[i % 2], psnr=[40.0]) for i in range(6)]
    none = [judged([True], task=i, kind=kinds[i % 2], psnr=[20.0]) for i in range(6)]
    poisson = [judged([False], task=i, kind=kinds[i % 2]) for i in range(6)]  # exact outside, colors shifted
    pixel = [judged([True], task=i, kind=kinds[i % 2]) for i in range(6)]
    claims = scoring.evaluate_claims({"recon-decoder": decoder, "recon-none": none, "recon-poisson": poisson,
                                      "recon-pixel": pixel}, ranked=True, reps=200)
    by = {c["comparison"]: c for c in claims}
    assert by["background RMSE: decoder - none"]["verdict"] == "holds"
    assert "background RMSE: decoder - poisson" not in by and "background RMSE: decoder - pixel" not in by
    colors = by["precision of the reconstructed results: decoder - poisson"]
    assert colors["difference"] == pytest.approx(1.0) and colors["verdict"] == "holds"
    assert by["edge ΔE on add/replace tasks: decoder - pixel"]["verdict"] == "not shown"  # equal seams here


# ----------------------------------------------------------------------------------------------- suites and judging

def assert_drawn_alike(tasks, fewer):
    """A task does not depend on how many are drawn: the first ones of a longer draw are the shorter draw's."""
    assert len(fewer) < len(tasks)
    for x, y in zip(tasks, fewer):
        assert x.prompt == y.prompt and np.array_equal(x.mask, y.mask)


def test_main_suite_is_seeded_with_kinds_in_turn():
    a, b = suite.main_suite(6, seed=3), suite.main_suite(4, seed=3)
    assert [t.kind for t in a] == ["add", "replace", "background"] * 2
    assert_drawn_alike(a, b)
    for t in a:
        rect = ~t.mask if t.kind == "background" else t.mask
        ys, xs = np.nonzero(rect)
        for side in (xs.max() - xs.min() + 1, ys.max() - ys.min() + 1):
            assert 64 / 5 <= side <= 64 / 2


def test_thin_suite_strokes_are_a_few_pixels_wide_and_placed_as_described():
    tasks = suite.thin_suite(12, seed=1)
    assert [t.kind for t in tasks[:2]] == ["thin-object", "thin-background"]
    for t in tasks:
        assert t.mask.sum() >= suite.MIN_STROKE_PIXELS
        assert ndimage.distance_transform_edt(t.mask).max() <= 2.5  # no pixel deeper than 2.5 px: about 4 px wide at most
        objects = np.zeros_like(t.mask)
        for i in range(len(t.scene.objects)):
            objects |= t.scene.object_mask(i)
        if t.kind == "thin-object":
            assert (t.mask <= objects).all()
            (old,) = [o for o in t.scene.objects if o.center == t.target.center and o.shape == t.target.shape]
            assert t.target.color != old.color and t.prompt == t.target.caption()
        else:
            assert not (t.mask & ndimage.binary_dilation(objects, iterations=3)).any()
            assert t.prompt.endswith("background")
    assert_drawn_alike(tasks, suite.thin_suite(3, seed=1))


def test_region_suite_is_seeded_with_two_disjoint_masks_and_two_targets():
    tasks, again = regions.region_suite(6, seed=2), regions.region_suite(3, seed=2)
    assert [t.kind for t in tasks] == ["add+add", "add+replace", "replace+replace"] * 2
    assert_drawn_alike(tasks, again)
    for t in tasks:
        first, second = t.region_tasks
        assert first.mask.any() and second.mask.any() and not (first.mask & second.mask).any()
        assert first.target != second.target and t.prompt == f"{first.prompt} and {second.prompt}"
        assert np.array_equal(t.mask, first.mask | second.mask)
        outside = ~t.mask  # the ideal edit changes nothing outside both masks
        assert np.array_equal(np.asarray(t.ground_truth())[outside], np.asarray(t.image)[outside])


def test_region_judging_needs_both_regions(judge):
    task = regions.region_suite(2, seed=0)[1]  # add+replace
    first, second = task.region_tasks
    only_first = first.ground_truth()  # region 1 drawn, region 2 left as in the source
    j = regions.judge_regions(judge, 0, task, [task.ground_truth(), only_first, task.image])
    assert j.region_correct == [[True, True], [True, False], [False, False]]
    assert j.correct == [True, False, False]
    m = regions.summarize([j], None)
    assert m["batch_precision"] == pytest.approx(1 / 3)
    assert [r["batch_precision"] for r in m["regions"]] == [pytest.approx(2 / 3), pytest.approx(1 / 3)]


def test_judge_accepts_ideal_edits_and_rejects_unedited_sources(judge):
    for task in suite.main_suite(3, seed=5) + suite.thin_suite(2, seed=5):
        ideal, source = scoring.judge_images(judge, [task.ground_truth(), task.image], task)
        assert ideal["correct"] and not source["correct"], task.prompt
        assert ideal["features"].shape == source["features"].shape


def test_partial_credit_counts_color_and_form_separately(judge):
    replace = suite.main_suite(2, seed=0)[1]
    old = next(o for o in replace.scene.objects if o.center == replace.target.center)
    j = scoring.judge_and_measure(judge, 0, replace, [replace.ground_truth(), replace.image])
    assert j.correct == [True, False] and j.color_correct[0] and j.form_correct[0]
    assert j.color_correct[1] == (old.color == replace.target.color)
    assert j.form_correct[1] == (old.shape == replace.target.shape)
    m = scoring.summarize([j])
    assert m["color_precision"] == np.mean(j.color_correct) and m["form_precision"] == np.mean(j.form_correct)
    thin = scoring.judge_and_measure(judge, 0, suite.thin_suite(1)[0], [suite.thin_suite(1)[0].ground_truth()])
    assert thin.form_correct == [None] and math.isnan(scoring.summarize([thin])["form_precision"])


# ----------------------------------------------------------------------------------------------- methods

@pytest.fixture(scope="module")
def ctx(sd_pipe, scorer, one_thread):
    return M.EvalContext(sd_pipe, scorer, steps=4, num_images=2, reconstruction_steps=2)


@pytest.fixture(scope="module")
def task():
    return suite.main_suite(2, seed=0)[1]  # a "replace" task


def _latents(pipe, task, seed=5):
    return pipe(task.prompt, task.image, task.mask_image(), num_inference_steps=4, skip_fraction=0.25,
                num_images_per_prompt=1, generator=[torch.Generator().manual_seed(seed)], output_type="latent",
                reconstruction="none").images


def test_sdedit_baseline_changes_the_background_before_the_paste_and_not_after(ctx, task):
    pipe = ctx.pipe
    prepared = pipe.prepare_image_and_mask(task.image, task.mask_image(), None, None, False)
    z0 = pipe.encode_source(prepared.image)
    keep = (1 - torch.nn.functional.adaptive_max_pool2d(prepared.mask, z0.shape[-2:])).bool().expand_as(z0)
    bld_latents = _latents(pipe, task)
    sdedit_latents = _latents(ctx.regeneration_pipe("never"), task)
    assert torch.equal(bld_latents[keep], z0[keep])  # BLD: outside the mask the latent is the source's
    assert (sdedit_latents[keep] - z0[keep]).abs().max() > 1e-3  # SDEdit regenerated it
    out = M.run_bld(ctx, task, 5, pipe=ctx.regeneration_pipe("never"), reconstruction="pixel")
    outside = ~task.mask
    for image in out.images:  # the paste restores every pixel outside the mask
        assert np.array_equal(np.asarray(image)[outside], np.asarray(task.image)[outside])


def test_blend_once_differs_from_both_and_is_reproducible(ctx, task):
    once = _latents(ctx.regeneration_pipe("first"), task)
    assert torch.equal(once, _latents(ctx.regeneration_pipe("first"), task))
    assert not torch.allclose(once, _latents(ctx.regeneration_pipe("never"), task))
    assert not torch.allclose(once, _latents(ctx.pipe, task))


def test_reconstruction_variants_reuse_the_ranked_latents(ctx, task):
    base = M.run_bld(ctx, task, 7, keep_latents=True)
    assert base.latents.shape[0] == 2 and base.scores[0] >= base.scores[1]
    pixel = M.reconstruct(ctx, task, base, "pixel")
    for a, b in zip(pixel.images, base.images):  # the same images as the BLD run itself, in ranked order
        assert np.array_equal(np.asarray(a), np.asarray(b))
    top = M.reconstruct(ctx, task, base, "decoder", top=1)
    assert len(top.images) == 1 and top.seconds >= base.seconds / 2


def test_diffusers_inpaint_baseline_ranks_its_results(ctx, task):
    out = M.run_diffusers_inpaint(ctx, task, 3)
    assert len(out.images) == 2 and out.images[0].size == task.image.size
    assert out.scores[0] >= out.scores[1] and sorted(out.seeds) == [3, 4]


def test_nearest_mask_that_vanishes_is_a_refused_task(ctx):
    task = suite.thin_suite(1, seed=0)[0]
    thin = task.mask & False
    thin[10, 11] = True  # one pixel off the nearest sampling grid
    tiny = type(task)(task.image, thin, task.prompt, task.target, task.kind, task.scene, task.target_scene)
    out = M.run_bld(ctx, tiny, 0, latent_mask_mode="nearest")
    assert out.failed and len(out.images) == 2
    assert np.array_equal(np.asarray(out.images[0]), np.asarray(task.image))


# ----------------------------------------------------------------------------------------------- the run

SMALL = ["--tasks", "3", "--thin-tasks", "2", "--region-tasks", "2", "--seam-tasks", "1", "--steps", "3", "--skip-fractions", "0.25,0.5",
         "--reconstruction-steps", "2", "--examples", "1", "--num-results", "2", "--no-progress", "--threads", "1"]


@pytest.mark.slow
def test_quick_run_writes_the_report(tmp_path, capsys):
    before = torch.get_num_threads()
    out = tmp_path / "report"
    try:
        code = main(["eval", "-o", str(out), "--quick", "--model", "tiny-random", *SMALL])
    finally:
        torch.set_num_threads(before)
    stdout = capsys.readouterr().out
    assert code == 0 and str(out / "report.md") in stdout
    report = json.loads((out / "report.json").read_text())
    assert {"config", "settings", "environment", "judge", "suites", "methods", "metrics", "skip_sweep", "claims",
            "files", "seconds", "command"} <= set(report)
    assert report["command"].startswith("bld eval -o") and "--quick" in report["command"]
    assert report["config"]["tasks"] == 3 and report["suites"]["thin"]["tasks"] == 2
    main_metrics = report["metrics"]["main"]
    for name in ("bld", "bld-nearest", "sdedit-paste", "blend-once", "diffusers-inpaint", "bld-skip-0.5",
                 "reference:ground-truth", "reference:source"):
        m = main_metrics[name]
        for key in ("batch_precision", "batch_precision_ci", "best_precision", "any_correct", "diversity",
                    "color_precision", "form_precision",
                    "background_psnr", "background_ssim", "edge_delta_e", "edge_delta_e_seam", "seconds_per_result"):
            assert key in m, (name, key)
    assert set(report["metrics"]["reconstruction"]) == {f"recon-{r}" for r in M.RECONSTRUCTIONS}
    assert set(report["metrics"]["thin"]) >= {"thin-bld", "thin-bld-shrink", "thin-nearest", "thin-nearest-shrink"}
    assert main_metrics["reference:ground-truth"]["batch_precision"] == 1.0
    assert main_metrics["bld"]["background_psnr"] == "inf"  # pixel reconstruction: exact outside the mask
    assert [s["skip_fraction"] for s in report["skip_sweep"]] == [0.25, 0.5]
    assert {c["verdict"] for c in report["claims"]} <= {"holds", "contradicted", "not shown", "not measurable"}
    for rel in report["files"]["plots"] + report["files"]["examples"]:
        assert (out / rel).stat().st_size > 0
    assert set(report["files"]["plots"]) == {"precision_vs_skip.png", "background_psnr.png"}
    md = (out / "report.md").read_text()
    for heading in ("## Main suite", "### Partial credit", "## Background reconstruction", "## Thin masks",
                    "## Skipped fraction of the schedule", "## The paper's claims, measured"):
        assert heading in md
    assert "| BLD (default) |" in md
    lines = (out / "results.jsonl").read_text().splitlines()
    main_runs = 5 + 1  # methods (with one extra skip fraction), 2 results each
    region_lines = 2 * (len(regions.METHODS) * 2 + 2)  # quick: 2 region tasks, references 1 result each
    assert len(lines) == 3 * (main_runs * 2 + len(M.RECONSTRUCTIONS) * 1 + 2) + 2 * (4 * 2 + 2) + region_lines
    assert all(len(json.loads(line)["region_correct"]) == 2 for line in lines if '"regions' in line)
    assert report["suites"]["regions"]["tasks"] == 2 and report["suites"]["seams"]["tasks"] == 1
    assert "--region-tasks 2 --seam-tasks 1" in report["command"]
    assert report["judge"]["calibration"]["regions"]["ground_truth"] == 1.0
    assert set(report["metrics"]["regions"]) >= {f"regions:{n}" for n in regions.METHODS}
    assert [r["masking"] for r in report["soft_seams"]] == list(soft_seams.MASKINGS)
    assert "examples/regions-bld-regions.png" in report["files"]["examples"]
    assert "## Several regions" in md and "## Soft masks: seams against binary masks" in md

    code = main(["eval", "-o", str(out), "--quick", "--model", "tiny-random", *SMALL])
    assert code == 2 and "already exists" in capsys.readouterr().err


def test_eval_rejects_bad_sizes(tmp_path, capsys):
    assert main(["eval", "-o", str(tmp_path / "r"), "--tasks", "-1"]) == 2
    assert "tasks=-1" in capsys.readouterr().err
    assert main(["eval", "-o", str(tmp_path / "r"), "--skip-fractions", "a,b"]) == 2
    assert "--skip-fractions" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_the_outpaint_fill_and_soft_seam_measurements_run_and_report_every_row(capsys):
    from bld.world.evaluation import outpaint_fill

    fills = outpaint_fill.main(["--tasks", "1", "--num-results", "1"])
    assert [row["fill"] for row in fills] == ["edge", "telea"]
    assert all(row["results"] == 1 and math.isfinite(row["psnr_new_area"]) for row in fills)
    seams = soft_seams.main(["--tasks", "2", "--num-results", "1"])
    assert [row["masking"] for row in seams] == list(soft_seams.MASKINGS)
    assert seams[0]["background_psnr"] == math.inf  # a binary mask keeps the background exactly
    assert all(math.isfinite(row["background_psnr"]) for row in seams[1:])  # blur reaches past the binary edge
    lines = capsys.readouterr().out.splitlines()
    assert json.loads(lines[-1])["benchmark"] == "soft_seams"
