"""The world judge: shipped weights on held-out renders, a training smoke run, save/load round trip."""

import math

import numpy as np
import pytest
import torch

from bld.world import scenes as world
from bld.world.judge import (
    DEFAULT_WEIGHTS,
    HELDOUT_SEED_BASE,
    Judge,
    JudgeNet,
    _edit_style_box,
    load_judge,
    mask_box,
    save_judge,
    train_judge,
)


@pytest.fixture(scope="module")
def judge():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small batches: threads only contend on a shared CPU
    yield load_judge()
    torch.set_num_threads(threads)


def _heldout(n, seed=123):
    """n held-out scenes (a stream training never uses): image, one object's edit-style box and tight box."""
    out = []
    for i in range(n):
        rng = np.random.default_rng([HELDOUT_SEED_BASE, seed, i])
        scene = world.sample_scene(rng)
        j = int(rng.integers(len(scene.objects)))
        out.append((world.render(scene), scene, j, _edit_style_box(rng, scene.objects[j])))
    return out


def test_shipped_weights_are_small():
    assert DEFAULT_WEIGHTS.exists() and DEFAULT_WEIGHTS.with_suffix(".json").exists()
    assert DEFAULT_WEIGHTS.stat().st_size < 2_000_000


def test_shipped_judge_classifies_heldout_object_crops(judge):
    items = _heldout(200)
    loose = judge.classify_regions([im for im, *_ in items], [box for *_, box in items])
    tight = judge.classify_regions([im for im, *_ in items], [s.object_box(j) for _, s, j, _ in items])
    for res in (loose, tight):
        shape = np.mean([r["shape"] == s.objects[j].shape for r, (_, s, j, _) in zip(res, items)])
        color = np.mean([r["color"] == s.objects[j].color for r, (_, s, j, _) in zip(res, items)])
        assert shape >= 0.98 and color >= 0.98, (shape, color)


def test_shipped_judge_backgrounds_and_single_calls(judge):
    items = _heldout(40, seed=7)
    res = judge.classify_backgrounds([im for im, *_ in items])
    assert np.mean([r["pattern"] == s.background.pattern for r, (_, s, _, _) in zip(res, items)]) >= 0.95
    assert np.mean([r["color"] == s.background.color for r, (_, s, _, _) in zip(res, items)]) >= 0.95
    im, scene, j, box = items[0]
    one = judge.classify_region(im, box=box)
    assert one["shape"] in world.SHAPES and one["color"] in world.COLORS
    assert math.isclose(sum(one["shape_probs"].values()), 1, rel_tol=1e-4)
    mask = np.zeros((64, 64), bool)
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    mask[y0:y1, x0:x1] = True
    assert mask_box(mask) == (x0, y0, x1, y1)
    by_mask = judge.classify_region(im, mask=mask)
    assert set(by_mask) == set(one)
    bg = judge.classify_background(im, kept_mask=mask)
    assert bg["pattern"] in world.BACKGROUND_PATTERNS and bg["color"] in world.BACKGROUND_COLORS


def test_shipped_judge_on_edit_ground_truths(judge):
    """How the judge is used: the object in an add/replace mask, the background outside a kept rectangle."""
    tasks = [world.sample_edit_task(np.random.default_rng([HELDOUT_SEED_BASE, 99, i])) for i in range(60)]
    obj = [t for t in tasks if t.kind != "background"]
    bg = [t for t in tasks if t.kind == "background"]
    assert obj and bg
    r = judge.classify_regions([t.ground_truth() for t in obj], masks=[t.mask for t in obj])
    assert np.mean([a["shape"] == t.target.shape and a["color"] == t.target.color for a, t in zip(r, obj)]) >= 0.95
    r = judge.classify_backgrounds([t.ground_truth() for t in bg], [~t.mask for t in bg])
    assert np.mean([a["pattern"] == t.target.pattern and a["color"] == t.target.color for a, t in zip(r, bg)]) >= 0.95


def test_train_judge_smoke():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    log = []
    try:
        model = train_judge(seed=5, steps=8, batch_size=16, lr=3e-3, log=log, log_every=1, progress=False)
    finally:
        torch.set_num_threads(threads)
    losses = [loss for _, loss, _ in log]
    assert len(losses) == 8 and all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-3:]) < losses[0]
    assert isinstance(model, JudgeNet) and not model.training


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = JudgeNet((8, 16, 16)).eval()
    path = save_judge(model, tmp_path / "j.safetensors", {"note": "test"})
    loaded = load_judge(path)
    assert loaded.config["note"] == "test" and loaded.model.widths == (8, 16, 16)
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        a, b = model(x), loaded.model(x)
    for k in a:
        assert torch.equal(a[k], b[k])
    im = world.render(world.sample_scene(np.random.default_rng(3)))
    assert Judge(model).classify_region(im, box=(10, 10, 40, 40)) == loaded.classify_region(im, box=(10, 10, 40, 40))
