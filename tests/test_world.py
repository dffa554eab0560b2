"""The synthetic shapes world: determinism, rendering against masks, the caption grammar, edit tasks."""

import numpy as np
import pytest
from scipy.ndimage import binary_dilation

from bld.world import scenes as world
from bld.world.scenes import (
    BACKGROUND_PATTERNS,
    COLORS,
    SHAPES,
    BackgroundSpec,
    ObjectSpec,
    Scene,
    parse_caption,
    render,
    sample_batch,
    sample_edit_task,
    sample_scene,
    training_caption,
    vocabulary,
)


def _bytes(items):
    return [im.tobytes() for im, _, _ in items]


def test_same_seed_same_bytes_and_different_seeds_differ():
    a, b, c = sample_batch(7, 12), sample_batch(7, 12), sample_batch(8, 12)
    assert _bytes(a) == _bytes(b) and [x[1] for x in a] == [x[1] for x in b]
    assert _bytes(a) != _bytes(c)
    assert _bytes(sample_batch(7, 4, start=8)) == _bytes(a)[8:]  # items do not depend on batch boundaries
    t1, t2 = sample_batch(7, 12, training_captions=True), sample_batch(7, 12, training_captions=True)
    assert [x[1] for x in t1] == [x[1] for x in t2]


def test_vocabulary_sizes():
    assert len(SHAPES) >= 6 and len(COLORS) == 8 and len(set(COLORS.values())) == 8
    assert set(BACKGROUND_PATTERNS) == {"plain", "gradient", "stripes", "checkerboard", "dots"}


@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_and_color_renders_inside_its_mask(shape):
    for color, rgb in COLORS.items():
        bg = BackgroundSpec("plain", "black" if color != "black" else "white")
        scene = Scene(bg, (ObjectSpec(shape, color, (32.0, 32.0), 22.0, 10.0),))
        img = np.asarray(render(scene)).astype(np.float32)
        mask = scene.object_mask(0)
        assert img.shape == (64, 64, 3) and mask.shape == (64, 64) and mask.dtype == bool
        assert mask.sum() > 0.25 * 22 * 22, (shape, mask.sum())
        assert np.abs(img[mask].mean(axis=0) - rgb).max() < 30, (shape, color)
        drawn = np.abs(img - np.asarray(COLORS[bg.color], np.float32)).max(axis=-1) > 60
        assert not (drawn & ~binary_dilation(mask)).any(), (shape, color)
        x0, y0, x1, y1 = scene.object_box(0)
        ys, xs = np.nonzero(mask)
        assert x0 <= xs.min() and xs.max() < x1 and y0 <= ys.min() and ys.max() < y1
        assert scene.object_mask(0, size=128).sum() == pytest.approx(4 * mask.sum(), rel=0.1)


def test_every_background_pattern_renders_both_colors():
    for pattern in BACKGROUND_PATTERNS:
        img = np.asarray(render(Scene(BackgroundSpec(pattern, "blue"), ())))
        spread = img.reshape(-1, 3).astype(int).max(axis=0) - img.reshape(-1, 3).min(axis=0)
        assert (spread.max() == 0) == (pattern == "plain"), pattern
    img = np.asarray(render(Scene(BackgroundSpec("stripes", "red", "white"), ())))
    assert {tuple(p) for p in img.reshape(-1, 3)} >= {COLORS["red"], COLORS["white"]}


def test_captions_parse_back_to_the_scene():
    rng = np.random.default_rng(0)
    for _ in range(200):
        scene = sample_scene(rng)
        facts = tuple((o.color, o.shape) for o in scene.objects)
        full = parse_caption(scene.caption())
        assert full.objects == facts and full.background == scene.background
        for i, o in enumerate(scene.objects):
            assert parse_caption(scene.object_caption(i)) == (((o.color, o.shape),), None)
        assert parse_caption(scene.background_caption()) == ((), scene.background)
    for bg in (BackgroundSpec("dots", "orange", "white"), BackgroundSpec("gradient", "orange")):
        assert parse_caption(bg.caption()).background == bg
    assert Scene(BackgroundSpec("gradient", "orange"), ()).caption() == "an orange gradient"
    assert ObjectSpec("star", "orange", (0, 0), 20).caption() == "an orange star"
    with pytest.raises(ValueError):
        parse_caption("a red dragon")


def test_vocabulary_covers_every_caption():
    vocab = set(vocabulary())
    rng = np.random.default_rng(1)
    words = set()
    for _ in range(300):
        scene = sample_scene(rng)
        words |= set(scene.caption().split()) | set(training_caption(scene, rng).text.split())
    words |= set(BackgroundSpec("stripes", "red", "white").caption().split())
    assert words <= vocab
    assert len(vocab) == len(vocabulary())


def test_training_caption_mix():
    rng = np.random.default_rng(2)
    kinds = {"full": 0, "object": 0, "background": 0}
    for _ in range(600):
        scene = sample_scene(rng)
        cap = training_caption(scene, rng)
        kinds[cap.kind] += 1
        if cap.kind == "object":
            assert cap.text == scene.object_caption(cap.object_index)
        elif cap.kind == "background":
            assert cap.text == scene.background_caption() and cap.object_index is None
        else:
            assert cap.text == scene.caption()
    for kind, p in world.CAPTION_PROBABILITIES.items():
        assert abs(kinds[kind] / 600 - p) < 0.07, kinds


def test_scene_statistics():
    rng = np.random.default_rng(3)
    scenes = [sample_scene(rng) for _ in range(300)]
    multi = np.mean([len(s.objects) >= 2 for s in scenes])
    assert multi >= 0.4, multi
    for s in scenes:
        assert 1 <= len(s.objects) <= 3
        assert len({(o.shape, o.color) for o in s.objects}) == len(s.objects)
        for i, o in enumerate(s.objects):
            assert 20 <= o.size <= 32 and abs(o.rotation) <= world.MAX_ROTATION
            x0, y0, x1, y1 = o.box()
            assert x0 >= 0 and y0 >= 0 and x1 <= 64 and y1 <= 64
            assert o.color in world.object_colors_for(s.background)
    assert len({s.background.pattern for s in scenes}) == 5 and len({o.shape for s in scenes for o in s.objects}) == 6


def test_sample_scene_size_parameter():
    scene = sample_scene(np.random.default_rng(4), size=96, min_objects=2, max_objects=2,
                         min_object_size=30, max_object_size=40)
    assert render(scene).size == (96, 96) and len(scene.objects) == 2
    assert render(scene, size=48).size == (48, 48)


@pytest.mark.parametrize("kind", world.EDIT_KINDS)
def test_edit_tasks(kind):
    rng = np.random.default_rng(5)
    for _ in range(40):
        task = sample_edit_task(rng, kind=kind)
        assert task.kind == kind and task.mask.shape == (64, 64) and task.image.size == (64, 64)
        rect = ~task.mask if kind == "background" else task.mask
        ys, xs = np.nonzero(rect)
        w, h = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
        assert rect.sum() == w * h  # a rectangle
        assert 64 / 5 <= w <= 32 and 64 / 5 <= h <= 32, (w, h)
        assert task.prompt == task.target.caption()
        truth = np.asarray(task.ground_truth())
        assert (truth[~task.mask] == np.asarray(task.image)[~task.mask]).all()
        assert (truth[task.mask] != np.asarray(task.image)[task.mask]).any()
        if kind == "background":
            assert isinstance(task.target, BackgroundSpec) and task.target_scene.background == task.target
            assert parse_caption(task.prompt).background == task.target
            kept = task.target_scene.objects[0]
            assert not (task.target_scene.object_mask(0) & task.mask).any() and kept in task.scene.objects
        else:
            assert isinstance(task.target, ObjectSpec) and parse_caption(task.prompt).objects == (
                (task.target.color, task.target.shape),)
            j = task.target_scene.objects.index(task.target)
            assert (task.target_scene.object_mask(j) <= task.mask).all()  # the new object lies inside the mask
            others = [o for o in task.target_scene.objects if o != task.target]
            assert len(others) == len(task.scene.objects) - (kind == "replace")
            for k, o in enumerate(task.target_scene.objects):
                if o != task.target:
                    assert not (task.target_scene.object_mask(k) & task.mask).any()
        assert task.mask_image().mode == "L" and np.asarray(task.mask_image()).max() == 255
