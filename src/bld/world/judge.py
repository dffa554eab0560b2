"""A small CNN judge of the synthetic world (`bld.world`), trained on ground-truth renders only.

It is independent of the CLIP model used for ranking, and answers three questions about an image of the
world (64 x 64 px; other sizes are resized to 64 first):

* `Judge.classify_region(image, box=... | mask=...)`: shape and color of the object inside a region. The
  region's bounding box (plus `margin` px) is cropped and stretched to 32 x 32 px, so judging "the object
  in the mask" of an edit is cropping the mask's box. With neither box nor mask the whole image is judged
  (a text-to-image sample with one object).
* `Judge.classify_background(image, kept_mask=None)`: background pattern and main color. The 64 px image
  is cut into 9 native-scale 32 x 32 tiles (stride 16); each tile is classified and the tiles are averaged,
  weighted by the squared fraction of their pixels outside `kept_mask` (tiles with less than half the best
  tile's fraction are dropped), and the kept pixels of each tile are first painted flat with the mean color
  of the tile's other pixels, so for a "background" edit only the regenerated area counts. Objects hide parts of some tiles;
  the network was trained on tiles with objects in them, and the averaging outvotes the worst tiles.
  `BackgroundSpec.second_color` is not judged (the world's scenes never set it).
* `Judge.accuracy(n, seed)`: held-out accuracy per head on a seed stream other than the training one.

Training data is made on the fly from `world.sample_scene`/`render` (1-3 objects, sizes 16-32 px): one
object crop and one background tile per scene. Object crops are edit-style loose rectangles (as
`sample_edit_task` draws its masks: sides 1/5-1/2 of the image, holding the object), jittered object boxes
(+-20% of the size in position, 90-140% in size, so they may cut the object a little and let neighbours
intrude) and, for one-object scenes, the whole image. Augmentation: gaussian blur of the whole image (half
the samples, sigma 0.3-1.3 px), per-channel gain/offset color jitter and gaussian noise, so the judge
tolerates a generator's slightly blurry, slightly off-color outputs.

The network: 6 conv layers (32-32-64-64-128-128 channels, BatchNorm, ReLU, 3 max-pools), global average
pooling and four linear heads: shape (6), object color (8), background pattern (5), background color (8).
About 290k parameters; the shipped weights are `judge_weights/judge.safetensors` (+ `judge.json`).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from torch import nn

from . import scenes as world
from .scenes import BACKGROUND_COLORS, BACKGROUND_PATTERNS, COLORS, SHAPES

CROP = 32  # network input side, px
WORLD = 64  # images are judged at this size
TILE_STRIDE = 16
EDIT_MIN_PROB = 0.9  # an edit counts as correct only when the judge is this sure of each answer
OBJECT_COLORS = tuple(COLORS)
HEADS = {"shape": SHAPES, "color": OBJECT_COLORS, "pattern": BACKGROUND_PATTERNS, "bg_color": BACKGROUND_COLORS}
DEFAULT_WEIGHTS = Path(__file__).with_name("judge_weights") / "judge.safetensors"
TRAIN_SEED_BASE = 1_000  # training streams are scene_rng([TRAIN_SEED_BASE, seed], i) ...
HELDOUT_SEED_BASE = 2_000  # ... held-out ones scene_rng([HELDOUT_SEED_BASE, seed], i): disjoint streams


class JudgeNet(nn.Module):
    def __init__(self, widths: tuple[int, ...] = (32, 64, 128)):
        super().__init__()
        layers, c = [], 3
        for i, w in enumerate(widths):
            for _ in range(2):
                layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
                c = w
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.widths = tuple(widths)
        self.heads = nn.ModuleDict({k: nn.Linear(c, len(v)) for k, v in HEADS.items()})

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, 32, 32) in [-1, 1] -> (B, C) globally pooled features (what the heads read)."""
        return self.features(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: (B, 3, 32, 32) in [-1, 1] -> logits per head."""
        h = self.embed(x)
        return {k: head(h) for k, head in self.heads.items()}


# ----------------------------------------------------------------------------------------------- tensors

def _to_tensor(images) -> torch.Tensor:
    """PIL images (any size; resized to 64) -> (B, 3, 64, 64) float in [0, 1]."""
    arrs = []
    for im in images:
        im = im.convert("RGB")
        if im.size != (WORLD, WORLD):
            im = im.resize((WORLD, WORLD), PIL.Image.BICUBIC)
        arrs.append(np.asarray(im))
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).float() / 255.0


def crop_resize(images: torch.Tensor, boxes: torch.Tensor, out: int = CROP) -> torch.Tensor:
    """Bilinear crops: images (B, C, H, W), boxes (B, 4) float (x0, y0, x1, y1) in pixel-edge coordinates
    -> (B, C, out, out), each box stretched to the square; outside the image the border repeats."""
    b, _, h, w = images.shape
    boxes = boxes.to(images.dtype)
    theta = torch.zeros(b, 2, 3, dtype=images.dtype)
    theta[:, 0, 0] = (boxes[:, 2] - boxes[:, 0]) / w
    theta[:, 0, 2] = (boxes[:, 0] + boxes[:, 2]) / w - 1
    theta[:, 1, 1] = (boxes[:, 3] - boxes[:, 1]) / h
    theta[:, 1, 2] = (boxes[:, 1] + boxes[:, 3]) / h - 1
    grid = F.affine_grid(theta, [b, images.shape[1], out, out], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _blur(images: torch.Tensor, sigmas: np.ndarray) -> torch.Tensor:
    """Per-image gaussian blur (separable, 7 taps); sigma 0 leaves the image unchanged."""
    b, c, h, w = images.shape
    x = torch.arange(-3, 4, dtype=torch.float32)
    s = torch.as_tensor(np.maximum(sigmas, 1e-3), dtype=torch.float32)[:, None]
    k = torch.exp(-x[None] ** 2 / (2 * s ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (b*c, 7)
    y = F.pad(images.reshape(1, b * c, h, w), (3, 3, 3, 3), mode="replicate")
    y = F.conv2d(y, k[:, None, None, :], groups=b * c)
    y = F.conv2d(y, k[:, None, :, None], groups=b * c)
    return y.reshape(b, c, h, w)


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return x * 2 - 1


# ----------------------------------------------------------------------------------------------- data

def _edit_style_box(rng, obj: world.ObjectSpec, size: int = WORLD):
    rect = world._rect_around(rng, obj.box(), size, margin=int(rng.integers(0, 3)))
    if rect is None:  # object too large for a 1/2-image mask: its box plus a small margin
        x0, y0, x1, y1 = obj.box()
        m = rng.uniform(0, 3)
        rect = (max(0, x0 - m), max(0, y0 - m), min(size, x1 + m), min(size, y1 + m))
    return rect


def _jitter_box(rng, obj: world.ObjectSpec, size: int = WORLD):
    x0, y0, x1, y1 = obj.box()
    w, h = x1 - x0, y1 - y0
    cx = (x0 + x1) / 2 + rng.uniform(-0.2, 0.2) * w
    cy = (y0 + y1) / 2 + rng.uniform(-0.2, 0.2) * h
    w, h = w * rng.uniform(0.9, 1.4), h * rng.uniform(0.9, 1.4)
    return (max(0.0, cx - w / 2), max(0.0, cy - h / 2), min(size, cx + w / 2), min(size, cy + h / 2))


@dataclass
class Batch:
    x: torch.Tensor  # (2B, 3, 32, 32): B object crops, then B background tiles
    labels: dict[str, torch.Tensor]  # shape/color: (B,), pattern/bg_color: (B,)


def make_batch(seed: int, start: int, n: int, augment: bool = True) -> Batch:
    """Scenes start..start+n-1 of training stream `seed`: one object crop and one background tile each."""
    scenes, boxes, shapes, colors = [], [], [], []
    aug = np.random.default_rng([TRAIN_SEED_BASE, seed, start, 7])
    for i in range(start, start + n):
        rng = np.random.default_rng([TRAIN_SEED_BASE, seed, i])
        scene = world.sample_scene(rng, min_object_size=16, max_object_size=32)
        j = int(rng.integers(len(scene.objects)))
        obj = scene.objects[j]
        u = rng.uniform()
        if len(scene.objects) == 1 and u < 0.1:
            box = (0.0, 0.0, float(WORLD), float(WORLD))
        elif u < 0.55:
            box = _edit_style_box(rng, obj)
        else:
            box = _jitter_box(rng, obj)
        scenes.append(scene)
        boxes.append(box)
        shapes.append(SHAPES.index(obj.shape))
        colors.append(OBJECT_COLORS.index(obj.color))
    imgs = _to_tensor([world.render(s) for s in scenes])
    if augment:
        sig = np.where(aug.uniform(size=n) < 0.5, aug.uniform(0.3, 1.3, size=n), 0.0)
        imgs = _blur(imgs, sig)
    crops = crop_resize(imgs, torch.tensor(boxes, dtype=torch.float32))
    offs = aug.integers(0, WORLD - CROP + 1, size=(n, 2))
    tiles = torch.stack([imgs[k, :, oy:oy + CROP, ox:ox + CROP] for k, (ox, oy) in enumerate(offs)])
    x = torch.cat([crops, tiles])
    if augment:
        m = 2 * n
        gain = torch.from_numpy(aug.uniform(0.93, 1.07, size=(m, 3, 1, 1))).float()
        offset = torch.from_numpy(aug.uniform(-0.04, 0.04, size=(m, 3, 1, 1))).float()
        noise = torch.from_numpy(aug.uniform(0, 0.04, size=(m, 1, 1, 1))).float()
        x = x * gain + offset + noise * torch.from_numpy(aug.standard_normal(x.shape)).float()
        x = x.clamp(0, 1)
    labels = {
        "shape": torch.tensor(shapes), "color": torch.tensor(colors),
        "pattern": torch.tensor([BACKGROUND_PATTERNS.index(s.background.pattern) for s in scenes]),
        "bg_color": torch.tensor([BACKGROUND_COLORS.index(s.background.color) for s in scenes]),
    }
    return Batch(_normalize(x), labels)


def _loss(model: JudgeNet, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
    n = batch.labels["shape"].shape[0]
    out = model(batch.x)
    parts = {}
    for k in HEADS:
        sl = slice(0, n) if k in ("shape", "color") else slice(n, 2 * n)
        parts[k] = F.cross_entropy(out[k][sl], batch.labels[k])
    return sum(parts.values()), {k: float(v.detach()) for k, v in parts.items()}


# ----------------------------------------------------------------------------------------------- training

def train_judge(seed: int = 0, steps: int = 1000, batch_size: int = 64, lr: float = 3e-3,
                widths: tuple[int, ...] = (32, 64, 128), log_every: int = 50, progress: bool = True,
                model: JudgeNet | None = None, log: list | None = None) -> JudgeNet:
    """Train a JudgeNet for `steps` AdamW steps of `batch_size` scenes (each giving an object crop and a
    background tile) from the training stream `seed`, one-cycle learning rate. Appends
    (step, loss, per-head losses) to `log` every `log_every` steps (and at the last step)."""
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    model = model or JudgeNet(widths)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.15)
    bar = tqdm(range(steps), disable=not progress, desc="judge")
    ema = None
    for step in bar:
        batch = make_batch(seed, step * batch_size, batch_size)
        loss, parts = _loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        ema = float(loss.detach()) if ema is None else 0.95 * ema + 0.05 * float(loss.detach())
        bar.set_postfix(loss=f"{ema:.3f}")
        if log is not None and (step % log_every == 0 or step == steps - 1):
            log.append((step, float(loss.detach()), parts))
            if not progress:
                print(f"step {step} loss {float(loss.detach()):.4f} " + " ".join(f"{k}={v:.3f}" for k, v in parts.items()))
    model.eval()
    return model


def save_judge(model: JudgeNet, path: str | Path = DEFAULT_WEIGHTS, extra: dict | None = None) -> Path:
    """Weights to `path` (.safetensors) and the config to the same path with suffix .json."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path))
    config = {"widths": list(model.widths), "crop": CROP, "world_size": WORLD, "tile_stride": TILE_STRIDE,
              "heads": {k: list(v) for k, v in HEADS.items()}, **(extra or {})}
    path.with_suffix(".json").write_text(json.dumps(config, indent=2) + "\n")
    return path


def load_judge(path: str | Path = DEFAULT_WEIGHTS) -> "Judge":
    from safetensors.torch import load_file

    path = Path(path)
    config = json.loads(path.with_suffix(".json").read_text())
    for k, v in HEADS.items():
        if tuple(config["heads"][k]) != tuple(v):
            raise ValueError(f"judge at {path} was trained for other {k} classes: {config['heads'][k]}")
    model = JudgeNet(tuple(config["widths"]))
    model.load_state_dict(load_file(str(path)))
    model.eval()
    return Judge(model, config)


# ----------------------------------------------------------------------------------------------- judging

def _mask_array(mask) -> np.ndarray:
    if isinstance(mask, PIL.Image.Image):
        mask = np.asarray(mask.convert("L")) >= 128
    return np.asarray(mask).astype(bool)


def mask_box(mask) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) bounding box of the True pixels (x1, y1 exclusive)."""
    m = _mask_array(mask)
    ys, xs = np.nonzero(m)
    if len(xs) == 0:
        raise ValueError("empty mask")
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _probs_dict(names, p: torch.Tensor) -> dict[str, float]:
    return {n: float(v) for n, v in zip(names, p)}


class Judge:
    """A trained JudgeNet with the world's conventions; see the module docstring."""

    def __init__(self, model: JudgeNet, config: dict | None = None):
        self.model = model.eval()
        self.config = config or {}

    @torch.no_grad()
    def _logits(self, x: torch.Tensor, chunk: int = 256) -> dict[str, torch.Tensor]:
        outs = [self.model(_normalize(x[i:i + chunk])) for i in range(0, len(x), chunk)]
        return {k: torch.cat([o[k] for o in outs]) for k in HEADS}

    def _region_boxes(self, images, boxes, margin):
        out = []
        for im, box in zip(images, boxes):
            s = WORLD / im.size[0], WORLD / im.size[1]
            if box is None:
                out.append((0.0, 0.0, float(WORLD), float(WORLD)))
                continue
            x0, y0, x1, y1 = box
            out.append((max(0.0, x0 * s[0] - margin), max(0.0, y0 * s[1] - margin),
                        min(WORLD, x1 * s[0] + margin), min(WORLD, y1 * s[1] + margin)))
        return torch.tensor(out, dtype=torch.float32)

    def classify_regions(self, images, boxes=None, masks=None, margin: float = 1.0) -> list[dict]:
        """Batch form of `classify_region`: lists of images and of boxes (or masks, or neither)."""
        images = list(images)
        if masks is not None:
            boxes = [mask_box(m) for m in masks]
        boxes = boxes if boxes is not None else [None] * len(images)
        x = crop_resize(_to_tensor(images), self._region_boxes(images, boxes, margin))
        logits = self._logits(x)
        ps, pc = logits["shape"].softmax(-1), logits["color"].softmax(-1)
        res = []
        for a, b in zip(ps, pc):
            i, j = int(a.argmax()), int(b.argmax())
            res.append({"shape": SHAPES[i], "color": OBJECT_COLORS[j], "shape_prob": float(a[i]),
                        "color_prob": float(b[j]), "shape_probs": _probs_dict(SHAPES, a),
                        "color_probs": _probs_dict(OBJECT_COLORS, b)})
        return res

    def classify_region(self, image: PIL.Image.Image, box=None, mask=None, margin: float = 1.0) -> dict:
        """Shape and color of the object in `box` (x0, y0, x1, y1 px, x1/y1 exclusive) or in the bounding box
        of `mask` (bool array or "L" image, True/255 = region), grown by `margin` px (at 64 px scale); the
        whole image if neither. -> {"shape", "color", "shape_prob", "color_prob", "shape_probs", "color_probs"}."""
        return self.classify_regions([image], [box] if mask is None else None,
                                     [mask] if mask is not None else None, margin)[0]

    def classify_backgrounds(self, images, kept_masks=None) -> list[dict]:
        """Batch form of `classify_background`."""
        images = list(images)
        kept_masks = kept_masks if kept_masks is not None else [None] * len(images)
        x = _to_tensor(images)
        keep = torch.zeros(len(images), 1, WORLD, WORLD)
        for b, km in enumerate(kept_masks):
            if km is not None:
                m = _mask_array(km)
                if m.shape != (WORLD, WORLD):
                    m = np.asarray(PIL.Image.fromarray(m.astype(np.uint8) * 255).resize((WORLD, WORLD))) >= 128
                keep[b, 0] = torch.from_numpy(m.astype(np.float32))
        offs = list(range(0, WORLD - CROP + 1, TILE_STRIDE))
        pos = [(ox, oy) for oy in offs for ox in offs]
        tiles = torch.stack([x[:, :, oy:oy + CROP, ox:ox + CROP] for ox, oy in pos], 1)  # (B, T, 3, 32, 32)
        outside = 1 - torch.stack([keep[:, :, oy:oy + CROP, ox:ox + CROP] for ox, oy in pos], 1)  # (B, T, 1, ..)
        # kept pixels show the old background: paint them flat with the mean of the tile's other pixels (a flat
        # patch reads like an object, which the network learned to look past)
        frac = outside.mean(dim=(2, 3, 4))  # (B, T)
        mean = (tiles * outside).sum(dim=(3, 4), keepdim=True) / outside.sum(dim=(3, 4), keepdim=True).clamp_min(1)
        tiles = tiles * outside + mean * (1 - outside)
        logits = self._logits(tiles.flatten(0, 1))
        lp = {k: logits[k].log_softmax(-1).view(len(images), len(pos), -1) for k in ("pattern", "bg_color")}
        res = []
        for b in range(len(images)):
            w = frac[b]
            w = torch.where(w >= 0.5 * w.max(), w, torch.zeros_like(w)) ** 2
            w = w / w.sum().clamp_min(1e-8)
            out = {}
            for k, names, key in (("pattern", BACKGROUND_PATTERNS, "pattern"), ("bg_color", BACKGROUND_COLORS, "color")):
                p = (lp[k][b] * w[:, None]).sum(0).softmax(-1)
                i = int(p.argmax())
                out[key], out[f"{key}_prob"], out[f"{key}_probs"] = names[i], float(p[i]), _probs_dict(names, p)
            res.append(out)
        return res

    def classify_background(self, image: PIL.Image.Image, kept_mask=None) -> dict:
        """Background pattern and main color, judged outside `kept_mask` (bool array or "L" image, True = the
        region to ignore, e.g. the kept rectangle of a "background" edit; None judges the whole image).
        -> {"pattern", "color", "pattern_prob", "color_prob", "pattern_probs", "color_probs"}."""
        return self.classify_backgrounds([image], [kept_mask])[0]

    def judge_edits(self, results, tasks, min_prob: float = EDIT_MIN_PROB) -> list[dict]:
        """Whether each edit result (RGB image) carries out its `world.EditTask`: "add"/"replace" — the
        object in the mask's box has the target's shape and color, each with probability >= `min_prob`
        (the judge has no "no object" class, so a confident answer stands in for "there is an object");
        "background" — the pattern and color outside the kept rectangle are the target's, same threshold.
        -> per result {"correct": bool, "kind", "features": (D,) tensor for diversity, plus the judge's answers}."""
        results, tasks = list(results), list(tasks)
        out: list[dict] = [{} for _ in results]
        obj = [i for i, t in enumerate(tasks) if t.kind != "background"]
        bg = [i for i, t in enumerate(tasks) if t.kind == "background"]
        if obj:
            answers = self.classify_regions([results[i] for i in obj], masks=[tasks[i].mask for i in obj])
            for i, a in zip(obj, answers):
                t = tasks[i].target
                ok = (a["shape"] == t.shape and a["color"] == t.color
                      and a["shape_prob"] >= min_prob and a["color_prob"] >= min_prob)
                out[i] = {"correct": bool(ok), "kind": tasks[i].kind, **a}
        if bg:
            answers = self.classify_backgrounds([results[i] for i in bg], [~tasks[i].mask for i in bg])
            for i, a in zip(bg, answers):
                t = tasks[i].target
                ok = (a["pattern"] == t.pattern and a["color"] == t.color
                      and a["pattern_prob"] >= min_prob and a["color_prob"] >= min_prob)
                out[i] = {"correct": bool(ok), "kind": "background", **a}
        feats = self.region_features(results, [t.mask for t in tasks])
        for o, f in zip(out, feats):
            o["features"] = f
        return out

    @torch.no_grad()
    def region_features(self, images, masks) -> torch.Tensor:
        """(N, D) pooled penultimate features of the network on each image's mask box (as judged)."""
        images = list(images)
        x = crop_resize(_to_tensor(images), self._region_boxes(images, [mask_box(m) for m in masks], 1.0))
        return self.model.embed(_normalize(x))

    # ------------------------------------------------------------------------------------------- evaluation

    def accuracy(self, n: int = 1000, seed: int = 0, edits: bool = True) -> dict[str, float]:
        """Held-out accuracy on `n` scenes of stream scene_rng([HELDOUT_SEED_BASE, seed], i), which training
        never draws from. Keys: "shape", "color" (an edit-style loose rectangle around one object, like
        sample_edit_task's masks), "shape_tight", "color_tight" (the object's own box), "pattern",
        "bg_color" (whole image); with `edits`, also `n` sample_edit_task ground truths: "edit_shape",
        "edit_color" ("add"/"replace": the mask's box), "edit_pattern", "edit_bg_color" ("background":
        judged outside the kept rectangle), with "edit_objects"/"edit_backgrounds" counting them."""
        images, loose, tight, truth, bgs = [], [], [], [], []
        for i in range(n):
            rng = np.random.default_rng([HELDOUT_SEED_BASE, seed, i])
            scene = world.sample_scene(rng)
            j = int(rng.integers(len(scene.objects)))
            images.append(world.render(scene))
            loose.append(_edit_style_box(rng, scene.objects[j]))
            tight.append(scene.object_box(j))
            truth.append(scene.objects[j])
            bgs.append(scene.background)
        res = {}
        for name, boxes in (("", loose), ("_tight", tight)):
            r = self.classify_regions(images, boxes)
            res["shape" + name] = float(np.mean([a["shape"] == t.shape for a, t in zip(r, truth)]))
            res["color" + name] = float(np.mean([a["color"] == t.color for a, t in zip(r, truth)]))
        r = self.classify_backgrounds(images)
        res["pattern"] = float(np.mean([a["pattern"] == b.pattern for a, b in zip(r, bgs)]))
        res["bg_color"] = float(np.mean([a["color"] == b.color for a, b in zip(r, bgs)]))
        if edits:
            obj_imgs, obj_masks, obj_truth, bg_imgs, bg_kept, bg_truth = [], [], [], [], [], []
            for i in range(n):
                task = world.sample_edit_task(np.random.default_rng([HELDOUT_SEED_BASE, seed, i, 1]))
                if task.kind == "background":
                    bg_imgs.append(task.ground_truth())
                    bg_kept.append(~task.mask)
                    bg_truth.append(task.target)
                else:
                    obj_imgs.append(task.ground_truth())
                    obj_masks.append(task.mask)
                    obj_truth.append(task.target)
            r = self.classify_regions(obj_imgs, masks=obj_masks)
            res["edit_shape"] = float(np.mean([a["shape"] == t.shape for a, t in zip(r, obj_truth)]))
            res["edit_color"] = float(np.mean([a["color"] == t.color for a, t in zip(r, obj_truth)]))
            r = self.classify_backgrounds(bg_imgs, bg_kept)
            res["edit_pattern"] = float(np.mean([a["pattern"] == b.pattern for a, b in zip(r, bg_truth)]))
            res["edit_bg_color"] = float(np.mean([a["color"] == b.color for a, b in zip(r, bg_truth)]))
            res["edit_objects"], res["edit_backgrounds"] = len(obj_truth), len(bg_truth)
        return res


def main(argv=None):
    import argparse

    p = argparse.ArgumentParser(description="train the world judge")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(DEFAULT_WEIGHTS))
    p.add_argument("--eval-n", type=int, default=1000)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    t0 = time.time()
    log: list = []
    model = train_judge(a.seed, a.steps, a.batch_size, a.lr, log=log, progress=False)
    train_s = time.time() - t0
    acc = Judge(model).accuracy(a.eval_n, seed=0)
    print(json.dumps(acc, indent=2))
    save_judge(model, a.out, {"training": {"seed": a.seed, "steps": a.steps, "batch_size": a.batch_size,
                                           "lr": a.lr, "seconds": round(train_s, 1), "threads": a.threads},
                              "heldout_accuracy": acc})
    print(f"trained {a.steps} steps in {train_s:.0f} s; saved {a.out}")


if __name__ == "__main__":
    main()
