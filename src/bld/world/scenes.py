"""A seeded synthetic world of shapes on patterned backgrounds, with captions, for the bundled model.

A scene is one background (plain, gradient, stripes, checkerboard or dots, in one of 8 colors) and one or
more objects (6 shapes x 8 colors, 20-32 px by default, rotated by at most 15 degrees). Coordinates are
pixels of a `Scene.size` x `Scene.size` canvas (64 by default); rendering at another size scales them.
Images are drawn at twice the size with PIL and box-downsampled, which antialiases the edges.

Captions come from a small grammar (`vocabulary()` lists every word it can produce):

    object      := ("a" | "an") COLOR SHAPE                       "a red star", "an orange heart"
    background  := ("a" | "an") COLOR "background"                plain
                 | ("a" | "an") COLOR ["and" COLOR] ("gradient" | "checkerboard")
                 | COLOR ["and" COLOR] ("stripes" | "dots")       "blue stripes"
    full        := object {"and" object} "on" background          "a red star and a blue circle on green dots"

Object captions alone (add or replace an object inside a mask) and background captions alone (replace
the background through an inverted mask) are valid prompts too; `training_caption` mixes all three.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
import PIL.Image
import PIL.ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "heart", "cross")
COLORS = {  # name -> RGB; every pair is at least 85 apart (Euclidean, 0-255 scale)
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (245, 225, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "purple": (140, 60, 200),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
}
BACKGROUND_PATTERNS = ("plain", "gradient", "stripes", "checkerboard", "dots")
BACKGROUND_COLORS = tuple(COLORS)
MIN_CONTRAST = 100.0  # least RGB distance between an object's color and each color of its background
MAX_ROTATION = 15.0  # degrees either way: keeps squares square and triangles pointing up
CAPTION_PROBABILITIES = {"full": 0.5, "object": 0.3, "background": 0.2}  # used by `training_caption`

_PATTERN_WORD = {"plain": "background", "gradient": "gradient", "stripes": "stripes",
                 "checkerboard": "checkerboard", "dots": "dots"}
_WORD_PATTERN = {w: p for p, w in _PATTERN_WORD.items()}
_UNARTICLED = ("stripes", "dots")  # plural nouns: "blue stripes", not "a blue stripes"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _tint(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """The derived second color of a pattern: lighter for dark colors, darker for light ones."""
    lum = (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]) / 255
    target, t = ((0, 0, 0), 0.35) if lum > 0.6 else ((255, 255, 255), 0.45)
    return tuple(round(c + (g - c) * t) for c, g in zip(rgb, target))


@dataclass(frozen=True)
class ObjectSpec:
    """One object: `shape` in SHAPES, `color` in COLORS, `center` (x, y) px, `size` px (extent of the
    unrotated shape), `rotation` degrees (counter-clockwise)."""

    shape: str
    color: str
    center: tuple[float, float]
    size: float
    rotation: float = 0.0

    def caption(self) -> str:
        return f"{_article(self.color)} {self.color} {self.shape}"

    def polygon(self, scale: float = 1.0) -> list[tuple[float, float]]:
        """The outline in pixels of a canvas `scale` times the scene's size."""
        a = math.radians(self.rotation)
        ca, sa = math.cos(a), math.sin(a)
        r = self.size / 2 * scale
        cx, cy = self.center[0] * scale, self.center[1] * scale
        return [(cx + r * (x * ca + y * sa), cy + r * (-x * sa + y * ca)) for x, y in _UNIT_SHAPES[self.shape]]

    def box(self, scale: float = 1.0) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) bounds of the outline, unclipped."""
        xs, ys = zip(*self.polygon(scale))
        return min(xs), min(ys), max(xs), max(ys)


@dataclass(frozen=True)
class BackgroundSpec:
    """`pattern` in BACKGROUND_PATTERNS, `color` in BACKGROUND_COLORS; `second_color` (a color name) sets the
    pattern's other color and is named in the caption; None uses a lighter or darker shade of `color`."""

    pattern: str
    color: str
    second_color: str | None = None

    def caption(self) -> str:
        word = _PATTERN_WORD[self.pattern]
        colors = self.color if self.second_color is None or self.pattern == "plain" else \
            f"{self.color} and {self.second_color}"
        return f"{colors} {word}" if word in _UNARTICLED else f"{_article(self.color)} {colors} {word}"

    def rgb(self) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        """(main, second) RGB colors."""
        main = COLORS[self.color]
        return main, COLORS[self.second_color] if self.second_color else _tint(main)


@dataclass(frozen=True)
class Scene:
    """A background and objects drawn in order (later ones on top) on a `size` x `size` canvas."""

    background: BackgroundSpec
    objects: tuple[ObjectSpec, ...]
    size: int = 64

    def caption(self) -> str:
        if not self.objects:
            return self.background_caption()
        return " and ".join(o.caption() for o in self.objects) + " on " + self.background_caption()

    def object_caption(self, i: int) -> str:
        return self.objects[i].caption()

    def background_caption(self) -> str:
        return self.background.caption()

    def object_box(self, i: int, size: int | None = None) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) integer pixel box (x1, y1 exclusive) holding object i's mask, clipped to the image."""
        size = size or self.size
        x0, y0, x1, y1 = self.objects[i].box(size / self.size)
        return max(0, math.floor(x0)), max(0, math.floor(y0)), min(size, math.ceil(x1)), min(size, math.ceil(y1))

    def object_mask(self, i: int, size: int | None = None) -> np.ndarray:
        """(size, size) bool: pixels at least half covered by object i's silhouette (occlusion ignored)."""
        size = size or self.size
        im = PIL.Image.new("L", (2 * size, 2 * size), 0)
        PIL.ImageDraw.Draw(im).polygon(self.objects[i].polygon(2 * size / self.size), fill=255)
        return np.asarray(im.reduce(2)) >= 128


def _star(points: int = 5, inner: float = 0.5) -> list[tuple[float, float]]:
    pts = [(r * math.sin(k * math.pi / points), -r * math.cos(k * math.pi / points))
           for k, r in zip(range(2 * points), [1.0, inner] * points)]
    ys = [y for _, y in pts]
    shift = -(max(ys) + min(ys)) / 2  # centre the outline vertically in its box
    return [(x, y + shift) for x, y in pts]


def _heart(n: int = 48) -> list[tuple[float, float]]:
    pts = [(16 * math.sin(t) ** 3, -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)))
           for t in (2 * math.pi * k / n for k in range(n))]
    xs, ys = zip(*pts)
    sx, cy = max(xs), (max(ys) + min(ys)) / 2
    s = max(sx, (max(ys) - min(ys)) / 2)
    return [(x / s, (y - cy) / s) for x, y in pts]


_UNIT_SHAPES = {  # outlines in [-1, 1]^2, y down
    "circle": [(math.cos(2 * math.pi * k / 48), math.sin(2 * math.pi * k / 48)) for k in range(48)],
    "square": [(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)],
    "triangle": [(0.0, -0.95), (1.0, 0.8), (-1.0, 0.8)],
    "star": _star(),
    "heart": _heart(),
    "cross": [(-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3), (0.3, 1), (-0.3, 1),
              (-0.3, 0.3), (-1, 0.3), (-1, -0.3), (-0.3, -0.3)],
}


def _background_array(bg: BackgroundSpec, n: int) -> np.ndarray:
    """(n, n, 3) uint8 background at canvas size n (patterns repeat every n/8 px)."""
    c1, c2 = (np.array(c, dtype=np.float32) for c in bg.rgb())
    y, x = np.mgrid[0:n, 0:n].astype(np.float32)
    period = n / 8
    if bg.pattern == "plain":
        t = np.zeros((n, n), np.float32)
    elif bg.pattern == "gradient":
        t = y / (n - 1)
    elif bg.pattern == "stripes":
        t = (np.floor((x + y) / period) % 2).astype(np.float32)
    elif bg.pattern == "checkerboard":
        t = ((np.floor(x / period) + np.floor(y / period)) % 2).astype(np.float32)
    elif bg.pattern == "dots":
        dx, dy = (x + 0.5) % period - period / 2, (y + 0.5) % period - period / 2
        t = (dx * dx + dy * dy <= (0.22 * period) ** 2).astype(np.float32)
    else:
        raise ValueError(f"unknown background pattern {bg.pattern!r}; expected one of {BACKGROUND_PATTERNS}")
    return np.rint(c1 + (c2 - c1) * t[..., None]).astype(np.uint8)


def render(scene: Scene, size: int | None = None) -> PIL.Image.Image:
    """RGB image of `size` x `size` px (default `scene.size`): drawn at 2x, box-downsampled."""
    size = size or scene.size
    n = 2 * size
    im = PIL.Image.fromarray(_background_array(scene.background, n), "RGB")
    draw = PIL.ImageDraw.Draw(im)
    for obj in scene.objects:
        draw.polygon(obj.polygon(n / scene.size), fill=COLORS[obj.color])
    return im.reduce(2)


def _contrasts(color: str, bg: BackgroundSpec) -> bool:
    rgb = np.array(COLORS[color], np.float32)
    return all(np.linalg.norm(rgb - np.array(c, np.float32)) >= MIN_CONTRAST for c in bg.rgb())


def object_colors_for(bg: BackgroundSpec) -> list[str]:
    """Object colors that stay distinguishable on `bg` (at least MIN_CONTRAST from both its colors)."""
    return [c for c in COLORS if _contrasts(c, bg)]


def _overlap(a, b) -> float:
    """Intersection area of boxes a and b over the smaller box's area."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    return w * h / min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))


def _sample_object(rng, bg, size, lo, hi, taken) -> ObjectSpec:
    """A random object fully inside the canvas whose (shape, color) is not in `taken`; position unchecked."""
    colors = object_colors_for(bg)
    while True:
        shape, color = SHAPES[rng.integers(len(SHAPES))], colors[rng.integers(len(colors))]
        if (shape, color) not in taken:
            break
    s = float(rng.integers(lo, hi + 1))
    rot = float(rng.uniform(-MAX_ROTATION, MAX_ROTATION))
    obj = ObjectSpec(shape, color, (0.0, 0.0), s, round(rot, 1))
    x0, y0, x1, y1 = obj.box()
    cx = float(rng.integers(math.ceil(-x0), math.floor(size - x1) + 1))
    cy = float(rng.integers(math.ceil(-y0), math.floor(size - y1) + 1))
    return replace(obj, center=(cx, cy))


def sample_background(rng: np.random.Generator) -> BackgroundSpec:
    return BackgroundSpec(BACKGROUND_PATTERNS[rng.integers(len(BACKGROUND_PATTERNS))],
                          BACKGROUND_COLORS[rng.integers(len(BACKGROUND_COLORS))])


def sample_scene(rng: np.random.Generator, *, size: int = 64, min_objects: int = 1, max_objects: int = 3,
                 min_object_size: int = 20, max_object_size: int = 32, max_overlap: float = 0.1) -> Scene:
    """A random scene: uniform background pattern and color, a uniform number of objects in
    [min_objects, max_objects] with sizes uniform in [min_object_size, max_object_size] px, colors that
    contrast with the background, no two alike in shape and color, and boxes overlapping by at most
    `max_overlap` of the smaller box. Placement is by rejection; an unplaceable layout is redrawn, and
    ValueError says when 100 layouts in a row failed (too many or too large objects for `size`)."""
    if not 0 <= min_objects <= max_objects or not 1 <= min_object_size <= max_object_size <= size * 0.75:
        raise ValueError("need 0 <= min_objects <= max_objects and "
                         "1 <= min_object_size <= max_object_size <= 0.75 size")
    bg = sample_background(rng)
    n = int(rng.integers(min_objects, max_objects + 1))
    for _ in range(100):
        objects: list[ObjectSpec] = []
        for _ in range(200 * n):
            if len(objects) == n:
                break
            obj = _sample_object(rng, bg, size, min_object_size, max_object_size,
                                 {(o.shape, o.color) for o in objects})
            if all(_overlap(obj.box(), o.box()) <= max_overlap for o in objects):
                objects.append(obj)
        if len(objects) == n:
            return Scene(bg, tuple(objects), size)
    raise ValueError(f"could not place {n} objects of {min_object_size}-{max_object_size} px in {size} px")


def scene_rng(seed: int, index: int) -> np.random.Generator:
    """The generator for item `index` of the stream `seed` (independent of batch boundaries)."""
    return np.random.default_rng([seed, index])


def sample_batch(seed: int, n: int, *, start: int = 0, size: int = 64, training_captions: bool = False,
                 **scene_kwargs) -> list[tuple[PIL.Image.Image, str, Scene]]:
    """Items start..start+n-1 of the stream `seed` as (image, caption, scene); the same arguments give the
    same bytes. Captions are full captions, or `training_caption` draws with `training_captions=True`."""
    out = []
    for i in range(start, start + n):
        rng = scene_rng(seed, i)
        scene = sample_scene(rng, size=size, **scene_kwargs)
        caption = training_caption(scene, rng).text if training_captions else scene.caption()
        out.append((render(scene), caption, scene))
    return out


class TrainingCaption(NamedTuple):
    text: str
    kind: str  # "full", "object" or "background"
    object_index: int | None  # the object named, for kind "object"


def training_caption(scene: Scene, rng: np.random.Generator) -> TrainingCaption:
    """The full caption with probability 0.5, one object's caption (uniform among the scene's objects)
    with 0.3, the background caption with 0.2 (CAPTION_PROBABILITIES); scenes without objects always
    get their background caption."""
    kinds = list(CAPTION_PROBABILITIES)
    kind = kinds[rng.choice(len(kinds), p=list(CAPTION_PROBABILITIES.values()))]
    if kind == "object" and scene.objects:
        i = int(rng.integers(len(scene.objects)))
        return TrainingCaption(scene.object_caption(i), "object", i)
    if kind == "full" and scene.objects:
        return TrainingCaption(scene.caption(), "full", None)
    return TrainingCaption(scene.background_caption(), "background", None)


def vocabulary() -> list[str]:
    """Every word the grammar can produce, sorted."""
    words = {"a", "an", "and", "on", *SHAPES, *COLORS, *_PATTERN_WORD.values()}
    return sorted(words)


class ParsedCaption(NamedTuple):
    objects: tuple[tuple[str, str], ...]  # (color, shape) in caption order
    background: BackgroundSpec | None


_C, _S = "|".join(COLORS), "|".join(SHAPES)
_OBJ = rf"(?:a|an) ({_C}) ({_S})"
_OBJS = re.compile(rf"{_OBJ}(?: and {_OBJ})*")
_BG = re.compile(rf"(?:(?:a|an) )?({_C})(?: and ({_C}))? ({'|'.join(_WORD_PATTERN)})")


def parse_caption(text: str) -> ParsedCaption:
    """Read the facts back from a full, object or background caption; ValueError if outside the grammar."""
    text = " ".join(text.split())
    objs_text, _, bg_text = text.partition(" on ") if " on " in text else (
        ("", "", text) if _BG.fullmatch(text) else (text, "", ""))
    if (objs_text and not _OBJS.fullmatch(objs_text)) or (bg_text and not _BG.fullmatch(bg_text)) or not text:
        raise ValueError(f"not a caption of this world: {text!r}")
    objs = tuple(re.findall(_OBJ, objs_text))
    bg = None
    if bg_text:
        c1, c2, word = _BG.fullmatch(bg_text).groups()
        pattern = _WORD_PATTERN[word]
        bg = BackgroundSpec(pattern, c1, c2 if pattern != "plain" else None)
    return ParsedCaption(objs, bg)


@dataclass(frozen=True)
class EditTask:
    """An evaluation edit. `image`: RGB source; `mask`: (H, W) bool, True = region to edit; `prompt`: an
    object caption ("add", "replace") or a background caption ("background", inverted mask: the kept
    rectangle holds one object); `target`: what the mask should end up containing; `target_scene`: the
    scene after an ideal edit, whose render is the ground truth inside the mask (see `ground_truth`)."""

    image: PIL.Image.Image
    mask: np.ndarray
    prompt: str
    target: ObjectSpec | BackgroundSpec
    kind: str
    scene: Scene
    target_scene: Scene

    def mask_image(self) -> PIL.Image.Image:
        """The mask as the pipelines take it: mode "L", 255 = edit."""
        return PIL.Image.fromarray(self.mask.astype(np.uint8) * 255, "L")

    def ground_truth(self) -> PIL.Image.Image:
        """render(target_scene) inside the mask, the source image outside it."""
        out = np.where(self.mask[..., None], np.asarray(render(self.target_scene)), np.asarray(self.image))
        return PIL.Image.fromarray(out, "RGB")


EDIT_KINDS = ("add", "replace", "background")


def _rect_around(rng, box, size, margin=1):
    """A rectangle (x0, y0, x1, y1) inside the image containing `box` plus `margin` px, sides uniform
    in [ceil(size/5), floor(size/2)] where possible; None if the box is too big for that."""
    lo, hi = math.ceil(size / 5), size // 2
    rect = []
    for a0, a1 in ((box[0], box[2]), (box[1], box[3])):
        a0, a1 = math.floor(a0) - margin, math.ceil(a1) + margin
        w_lo = max(lo, a1 - a0)
        if w_lo > hi:
            return None
        w = int(rng.integers(w_lo, hi + 1))
        p_lo, p_hi = max(0, a1 - w), min(a0, size - w)
        if p_lo > p_hi:
            return None
        p = int(rng.integers(p_lo, p_hi + 1))
        rect.append((p, p + w))
    (x0, x1), (y0, y1) = rect
    return x0, y0, x1, y1


def replacement(rng: np.random.Generator, old: ObjectSpec, background: BackgroundSpec,
                taken) -> ObjectSpec | None:
    """Another object in `old`'s place: a new shape and color drawn for `background` and a new rotation; None
    when the drawn (shape, color) is in `taken`."""
    colors = object_colors_for(background)
    shape, color = SHAPES[rng.integers(len(SHAPES))], colors[rng.integers(len(colors))]
    if (shape, color) in taken:
        return None
    rotation = round(float(rng.uniform(-MAX_ROTATION, MAX_ROTATION)), 1)
    return replace(old, shape=shape, color=color, rotation=rotation)


def rect_mask(rect, size: int) -> np.ndarray:
    """(size, size) bool, True inside the box (left, top, right, bottom)."""
    x0, y0, x1, y1 = (int(v) for v in rect)
    mask = np.zeros((size, size), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def sample_edit_task(rng: np.random.Generator, size: int = 64, kind: str | None = None) -> EditTask:
    """A random edit task of `kind` (uniform over EDIT_KINDS if None) on a 1-3 object scene. The mask is
    a rectangle (inverted for "background") whose sides lie in [size/5, size/2] and which holds the
    target object (or the kept object) whole and touches no other object's box. "add": the target is
    a new object in an empty area; "replace": an object's shape and/or color changes in place;
    "background": the pattern and/or color changes, and the objects outside the kept rectangle go."""
    kind = kind or EDIT_KINDS[rng.integers(len(EDIT_KINDS))]
    if kind not in EDIT_KINDS:
        raise ValueError(f"kind must be one of {EDIT_KINDS}")
    hi = min(round(size * 26 / 64), size // 2 - 6)  # objects 20-26 px at 64 px, so masks can hold them
    lo = min(round(size * 20 / 64), hi)
    for _ in range(1000):
        scene = sample_scene(rng, size=size, min_objects=1, max_objects=2 if kind == "add" else 3,
                             min_object_size=lo, max_object_size=hi)
        objs, bg = scene.objects, scene.background
        taken = {(o.shape, o.color) for o in objs}
        i = int(rng.integers(len(objs)))
        if kind == "add":
            target = _sample_object(rng, bg, size, lo, hi, taken)
            boxes, others = [target.box()], objs
        elif kind == "replace":
            old = objs[i]
            target = replacement(rng, old, bg, taken)
            if target is None:
                continue
            boxes, others = [old.box(), target.box()], objs[:i] + objs[i + 1:]
        else:
            target = sample_background(rng)
            if target == bg or not _contrasts(objs[i].color, target):
                continue
            boxes, others = [objs[i].box()], objs[:i] + objs[i + 1:]
        union = (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))
        rect = _rect_around(rng, union, size)
        if rect is None or any(_overlap(rect, o.box()) > 0 for o in others):
            continue
        inside = rect_mask(rect, size)
        if kind == "add":
            target_scene, mask = Scene(bg, objs + (target,), size), inside
        elif kind == "replace":
            target_scene, mask = Scene(bg, objs[:i] + (target,) + objs[i + 1:], size), inside
        else:
            target_scene, mask = Scene(target, (objs[i],), size), ~inside
        return EditTask(render(scene), mask, target.caption(), target, kind, scene, target_scene)
    raise ValueError(f"could not lay out a {kind!r} edit task at {size} px")
