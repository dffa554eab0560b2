"""Train the world's CLIP model before the UNet, as Stable Diffusion's text encoder was trained before its UNet.

    python -m bld.world.training.train_clip --out runs/clip --seed 0 [--resume]     # 6,000 + 1,500 steps, ~40 min
    python -m bld.world.training.train_clip --out runs/clip-more --init runs/clip/clip --freeze-text --pretrain-steps 0 --steps 1000

Its text tower then conditions the UNet (frozen: `train_unet --clip runs/clip`) and both towers rank edit
results (bld.ranking.ClipScorer). Two phases, one step counter:

1. `--pretrain-steps` of supervised shape classification for the vision tower (a linear head on its
   pooled output, dropped afterwards), on one-object scenes, half of them seen through a rectangle.
2. `--steps` of contrastive training of both towers, where every image also meets hard negative
   captions: its own caption with one shape word swapped for each other shape, and one color word for
   two other colors. Identical captions in a batch count as positives.

Why: trained jointly with the UNet, the text tower had learned colors and not shapes (zero-shot shape
accuracy 31%, chance 17%), so the UNet drew shapes it was not asked for. Contrastive training alone,
even with hard negatives, left the small ViT near chance on shapes for thousands of steps (39% after
2,500); a ViT this small learns shapes from a supervised signal first (ImageNet-style pretraining).
`--init` with `--freeze-text` trains the image side further without changing what the UNet sees.

Views of each scene in phase 2, as the ranking sees them (bld.ranking blacks out everything outside the mask):
- the whole image with its training caption (full, one object's or the background's);
- `--masked` of the items: a rectangle holding one object (sides 1/5-1/2 of the image, as the edit
  tasks draw them) with the rest black, captioned with that object;
- `--inverted` of the items: the same kind of rectangle black, the rest shown, with the background caption.
- `--cut` pairs per step (off by default): one object seen through a rectangle around it and through that
  rectangle shifted across it, so that the mask's edge cuts the object; the object's caption must score the
  whole view above the cut one (`cut_loss`). Edits often start an object across the mask's edge, and the
  ranking should put such a result below a whole object.

Writes to --out: `log.jsonl`, `checkpoint/` (clip/ as safetensors, optimizer, EMA, RNG state, step) and,
at the end, `clip/`: the EMA CLIPModel with the world tokenizer, loadable by CLIPModel.from_pretrained.
Every `--eval-every` steps the log gets the pretraining head's held-out shape accuracy (phase 1) or the
zero-shot accuracies of `zero_shot_accuracy` (phase 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .. import scenes as world
from . import EMA, JsonlLog, folder_written_atomically, load_checkpoint_state, rng_state, save_checkpoint, set_rng_state
from .configs import IMAGE_SIZE, CLIPConfig, build_clip
from .tokenizer import clear_call_state, write_vocab_files, write_world_tokenizer

HELDOUT_STREAM = 4_000  # zero-shot evaluation scenes: streams [HELDOUT_STREAM, i], never trained on
CUT_STREAM = 5_000  # cut-object pairs: streams [CUT_STREAM, seed, i]
_SHAPE_WORD = re.compile(r"\b(" + "|".join(world.SHAPES) + r")\b")
_COLOR_WORD = re.compile(r"\b(" + "|".join(world.COLORS) + r")\b")


def _swaps(rng: np.random.Generator, caption: str, pattern: re.Pattern, choices: tuple[str, ...],
           count: int) -> list[str]:
    """`caption` with one word matched by `pattern` (chosen at random) replaced by `count` other words of
    `choices` (all of them when count >= len(choices) - 1); [] if no word matches."""
    hits = list(pattern.finditer(caption))
    if not hits:
        return []
    hit = hits[rng.integers(len(hits))]
    others = [c for c in choices if c != hit.group(1)]
    if count < len(others):
        others = [others[k] for k in rng.choice(len(others), size=count, replace=False)]
    texts = [caption[:hit.start()] + new + caption[hit.end():] for new in others]
    return [re.sub(r"\ba (?=[aeiou])", "an ", re.sub(r"\ban (?=[^aeiou])", "a ", t)) for t in texts]  # articles


def hard_negatives(rng: np.random.Generator, caption: str, true_captions: set[str] = frozenset(),
                   shapes: int = 5, colors: int = 2) -> list[str]:
    """Captions one word away from `caption`: one shape word swapped for `shapes` other shapes (all five by
    default) and one color word for `colors` other colors, except those in `true_captions` (another object
    of the same scene is not a negative)."""
    out = _swaps(rng, caption, _SHAPE_WORD, world.SHAPES, shapes)
    out += _swaps(rng, caption, _COLOR_WORD, tuple(world.COLORS), colors)
    return list(dict.fromkeys(c for c in out if c != caption and c not in true_captions))


def _rectangle(rng: np.random.Generator, obj: world.ObjectSpec, size: int) -> np.ndarray | None:
    rect = world._rect_around(rng, obj.box(), size)
    if rect is None:
        return None
    x0, y0, x1, y1 = rect
    inside = np.zeros((size, size), bool)
    inside[y0:y1, x0:x1] = True
    return inside


def clip_batch(seed: int, start: int, n: int, masked: float = 0.35, inverted: float = 0.15,
               size: int = IMAGE_SIZE):
    """Items start..start+n-1 of the stream `seed` as (images (n, 3, size, size) in [0, 1], captions,
    hard negative captions (a list per item)). Same arguments, same batch."""
    images, captions, negatives = [], [], []
    for i in range(start, start + n):
        rng = world.scene_rng(seed, i)
        scene = world.sample_scene(rng, size=size)
        u = rng.random()
        keep = None
        if u < masked + inverted:
            k = int(rng.integers(len(scene.objects)))
            keep = _rectangle(rng, scene.objects[k], size)
        if keep is not None and u < masked:
            caption = scene.object_caption(k)
        elif keep is not None:
            keep, caption = ~keep, scene.background_caption()
        else:
            caption = world.training_caption(scene, rng).text
        images.append(_view(scene, keep))
        captions.append(caption)
        shown = set() if keep is not None else {o.caption() for o in scene.objects}
        negatives.append(hard_negatives(rng, caption, shown))
    return torch.stack(images), captions, negatives


def _cut_rectangle(rng: np.random.Generator, scene: world.Scene, k: int, keep: np.ndarray,
                   tries: int = 10) -> np.ndarray | None:
    """`keep` (a rectangle around object k) shifted by 35-65% of the object's size, so that 15-75% of the
    object stays inside: the object cut by the mask's edge, as an edit that starts it across the edge
    shows it to the ranking. None when no such shift keeps sides of at least 1/5 of the image."""
    size = keep.shape[0]
    rows, cols = np.flatnonzero(keep.any(1)), np.flatnonzero(keep.any(0))
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    silhouette = scene.object_mask(k)
    for _ in range(tries):
        dy = dx = 0
        while dy == 0 and dx == 0:
            dy, dx = (int(v) for v in rng.integers(-1, 2, size=2))
        step = rng.uniform(0.35, 0.65) * scene.objects[k].size
        ty0, ty1 = (max(0, min(size, round(v + dy * step))) for v in (y0, y1))
        tx0, tx1 = (max(0, min(size, round(v + dx * step))) for v in (x0, x1))
        if min(ty1 - ty0, tx1 - tx0) < math.ceil(size / 5):
            continue
        cut = np.zeros_like(keep)
        cut[ty0:ty1, tx0:tx1] = True
        if 0.15 <= (silhouette & cut).sum() / silhouette.sum() <= 0.75:
            return cut
    return None


def cut_pairs(seed: int, start: int, n: int, size: int = IMAGE_SIZE):
    """Items start..start+n-1 of the cut-object stream as (whole views, cut views, captions): one object seen
    through a rectangle around it and through that rectangle shifted across it (_cut_rectangle), with the
    object's caption; items where no cut is found are left out (None when none is found)."""
    wholes, cuts, captions = [], [], []
    for i in range(start, start + n):
        rng = np.random.default_rng([CUT_STREAM, seed, i])
        scene = world.sample_scene(rng, size=size)
        k = int(rng.integers(len(scene.objects)))
        keep = _rectangle(rng, scene.objects[k], size)
        cut = None if keep is None else _cut_rectangle(rng, scene, k, keep)
        if cut is not None:
            wholes.append(_view(scene, keep))
            cuts.append(_view(scene, cut))
            captions.append(scene.object_caption(k))
    return (torch.stack(wholes), torch.stack(cuts), captions) if captions else None


def cut_loss(clip, tokenizer, wholes, cuts, captions) -> torch.Tensor:
    """Each caption should match its object seen whole better than seen cut: softplus of the scaled gap."""
    text = text_features(clip, tokenizer, captions)
    whole = (image_features(clip, wholes) * text).sum(-1)
    cut = (image_features(clip, cuts) * text).sum(-1)
    return F.softplus((cut - whole) * clip.logit_scale.exp().clamp(max=100)).mean()


def _view(scene: world.Scene, keep: np.ndarray | None = None) -> torch.Tensor:
    """The scene's render as a (3, H, W) tensor in [0, 1], black outside `keep` (bool, H x W) when given."""
    rgb = np.asarray(world.render(scene), dtype=np.float32) / 255
    if keep is not None:
        rgb = rgb * keep[..., None]
    return torch.from_numpy(rgb).permute(2, 0, 1)


def pixels_for_clip(x01: torch.Tensor, size: int) -> torch.Tensor:
    """Images in [0, 1] -> CLIP-normalized pixels at `size`, as bld.ranking.ClipScorer prepares them."""
    from ...ranking import CLIP_MEAN, CLIP_STD

    if x01.shape[-1] != size:
        x01 = F.interpolate(x01, size=(size, size), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    return (x01 - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)


def text_features(clip, tokenizer, captions: list[str]) -> torch.Tensor:
    ids = tokenizer(captions, padding=True, max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids  # causal attention: padding after the end token changes nothing
    return F.normalize(clip.text_projection(clip.text_model(input_ids=ids).pooler_output), dim=-1)


def image_features(clip, pixels: torch.Tensor) -> torch.Tensor:
    return F.normalize(clip.visual_projection(clip.vision_model(pixel_values=pixels).pooler_output), dim=-1)


def contrastive_loss_with_negatives(clip, tokenizer, pixels, captions, negatives) -> torch.Tensor:
    """Symmetric InfoNCE over the batch; identical captions count as positives (soft targets), and each
    image's hard negative captions join the texts it is contrasted with (image -> text side only)."""
    extra = [c for negs in negatives for c in negs]
    texts = text_features(clip, tokenizer, captions + extra)
    image = image_features(clip, pixels)
    scale = clip.logit_scale.exp().clamp(max=100)
    logits = image @ texts.T * scale  # (n, n + extra)
    n = len(captions)
    same = torch.tensor([[a == b for b in captions + extra] for a in captions], dtype=torch.float32)
    i2t = F.cross_entropy(logits, same / same.sum(1, keepdim=True))
    same_tt = same[:, :n]
    t2i = F.cross_entropy(logits[:, :n].T, same_tt.T / same_tt.T.sum(1, keepdim=True))
    return (i2t + t2i) / 2


@torch.no_grad()
def zero_shot_accuracy(clip, tokenizer, n: int = 300) -> dict[str, float]:
    """Held-out one-object scenes: the share where the caption with the true shape (color) scores best of
    the 6 shapes (8 colors). `shape_object` / `color_object`: object captions on whole renders;
    `shape_full`: full captions; `shape_masked`: object captions on the object's rectangle with the rest
    black, the view ranking scores edits on."""
    rng = np.random.default_rng([HELDOUT_STREAM, n])
    scenes = [world.sample_scene(np.random.default_rng([HELDOUT_STREAM, i]), max_objects=1) for i in range(n)]
    size = clip.config.vision_config.image_size
    whole = image_features(clip, pixels_for_clip(torch.stack([_view(s) for s in scenes]), size))
    views = image_features(clip, pixels_for_clip(
        torch.stack([_view(s, _rectangle(rng, s.objects[0], s.size)) for s in scenes]), size))
    hits = {"shape_object": [], "shape_full": [], "color_object": [], "shape_masked": []}
    for s, v, m in zip(scenes, whole, views):
        o = s.objects[0]
        shaped = [dataclasses.replace(o, shape=sh) for sh in world.SHAPES]
        shape_text = text_features(clip, tokenizer, [x.caption() for x in shaped])
        full_text = text_features(clip, tokenizer, [world.Scene(s.background, (x,)).caption() for x in shaped])
        color_text = text_features(clip, tokenizer, [dataclasses.replace(o, color=c).caption() for c in world.COLORS])
        shape, color = world.SHAPES.index(o.shape), list(world.COLORS).index(o.color)
        hits["shape_object"].append(int((shape_text @ v).argmax()) == shape)
        hits["shape_full"].append(int((full_text @ v).argmax()) == shape)
        hits["color_object"].append(int((color_text @ v).argmax()) == color)
        hits["shape_masked"].append(int((shape_text @ m).argmax()) == shape)
    return {k: float(np.mean(v)) for k, v in hits.items()}


PRETRAIN_STREAM = 4_001  # vision pretraining scenes: streams [PRETRAIN_STREAM, seed, i]


def pretrain_batch(seed: int, start: int, n: int, masked: float = 0.5, size: int = IMAGE_SIZE):
    """Items start..start+n-1 of the pretraining stream: one-object scenes, `masked` of them seen through a
    rectangle around the object (as in clip_batch); -> (images in [0, 1], (n,) shape indices)."""
    images, shapes = [], []
    for i in range(start, start + n):
        rng = np.random.default_rng([PRETRAIN_STREAM, seed, i])
        scene = world.sample_scene(rng, size=size, max_objects=1)
        keep = _rectangle(rng, scene.objects[0], size) if rng.random() < masked else None
        images.append(_view(scene, keep))
        shapes.append(world.SHAPES.index(scene.objects[0].shape))
    return torch.stack(images), torch.tensor(shapes)


class ShapeHead(torch.nn.Module):
    """A linear shape classifier on the vision tower's pooled output, used only while pretraining it.
    Shapes only: colors and backgrounds the contrastive phase learns on its own within a few hundred
    steps; with heads for them too, shape accuracy stalled (34% held-out after 2,500 steps, against 64%
    with the shape head alone)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(width, len(world.SHAPES))

    def logits(self, clip, pixels: torch.Tensor) -> torch.Tensor:
        return self.linear(clip.vision_model(pixel_values=pixels).pooler_output)

    def loss(self, clip, pixels: torch.Tensor, shapes: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.logits(clip, pixels), shapes)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--steps", type=int, default=1500, help="contrastive steps (a resumed run continues to this)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint if it exists")
    p.add_argument("--pretrain-steps", type=int, default=6000,
                   help="supervised shape-classification steps of the vision tower before the contrastive ones")
    p.add_argument("--init", type=Path, help="start from this CLIPModel folder (e.g. a finished run's clip/)")
    p.add_argument("--freeze-text", action="store_true",
                   help="keep the text tower as it is (a UNet conditioned on it stays valid); the projections, "
                        "the vision tower and the logit scale still train")
    p.add_argument("--pretrain-batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--masked", type=float, default=0.35, help="share of masked-rectangle views")
    p.add_argument("--inverted", type=float, default=0.15, help="share of inverted-rectangle views")
    p.add_argument("--cut", type=int, default=0,
                   help="cut-object pairs per contrastive step: captions should prefer the whole object (0: off)")
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay; 0 turns EMA off")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--ckpt-every", type=int, default=200)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def export_clip(folder: Path, clip, tokenizer) -> Path:
    """CLIPModel and tokenizer in `folder`, written atomically."""
    with folder_written_atomically(folder) as tmp:
        clip.save_pretrained(tmp, safe_serialization=True)
        clear_call_state(tokenizer).save_pretrained(tmp)
        write_vocab_files(tmp)
    return folder


def _cosine(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor: linear warm-up over `warmup` steps, then cosine decay to 0 at `total`."""
    return min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, total))))


def train(args) -> dict:
    from safetensors.torch import load_file
    from transformers import CLIPModel

    torch.set_num_threads(args.threads)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint"
    log = JsonlLog(out / "log.jsonl")
    tokenizer = write_world_tokenizer(out / "tokenizer")
    torch.manual_seed(args.seed)
    clip = build_clip(tokenizer, CLIPConfig())
    if args.init:
        clip.load_state_dict(CLIPModel.from_pretrained(args.init).state_dict())
    if args.freeze_text:
        clip.text_model.requires_grad_(False)
    head = ShapeHead(clip.config.vision_config.hidden_size)
    trainable = [p for p in clip.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable + list(head.parameters()), lr=args.lr, betas=(0.9, 0.98),
                            weight_decay=0.05)
    ema = EMA(clip, args.ema) if args.ema > 0 else None
    step = 0  # pretraining steps first, then contrastive ones
    if args.resume and (ckpt / "meta.json").exists():
        meta, state = load_checkpoint_state(ckpt)
        clip.load_state_dict(load_file(ckpt / "clip" / "model.safetensors"), strict=False)
        head.load_state_dict(state["head"])
        opt.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        step = meta["step"]
        print(f"loaded {ckpt} at step {step}", file=sys.stderr)
        log.rewind(step)
    else:
        log.write(event="start", args={k: str(v) for k, v in vars(args).items()},
                  clip_params=sum(p.numel() for p in clip.parameters()))

    def averaged():
        if ema is None:
            return clip
        c = build_clip(tokenizer, CLIPConfig())
        ema.copy_to(c)
        if args.freeze_text:  # the average of a constant drifts by rounding: keep the frozen tower bit for bit
            c.text_model.load_state_dict(clip.text_model.state_dict())
        return c.eval()

    def checkpoint():
        state = {"optimizer": opt.state_dict(), "rng": rng_state(), "ema": ema.state_dict() if ema else None,
                 "head": head.state_dict()}
        save_checkpoint(ckpt, models={"clip": clip}, state=state,
                        meta={"step": step, "args": {k: str(v) for k, v in vars(args).items()}})

    size = clip.config.vision_config.image_size
    pre, total_steps = args.pretrain_steps, args.pretrain_steps + args.steps
    clip.train()
    bar = tqdm(total=total_steps, initial=step, desc="clip", disable=args.no_progress,
               mininterval=1 if sys.stderr.isatty() else 30, dynamic_ncols=True)
    total, n_acc = 0.0, 0
    while step < total_steps:
        if step < pre:  # supervised vision pretraining
            x, shapes = pretrain_batch(args.seed, step * args.pretrain_batch, args.pretrain_batch)
            loss = head.loss(clip, pixels_for_clip(x, size), shapes)
            lr = args.lr * min(1.0, (step + 1) / 50)
        else:
            k = step - pre
            x, captions, negatives = clip_batch(args.seed, k * args.batch, args.batch, args.masked, args.inverted)
            loss = contrastive_loss_with_negatives(clip, tokenizer, pixels_for_clip(x, size), captions, negatives)
            pairs = cut_pairs(args.seed, k * args.cut, args.cut) if args.cut else None
            if pairs is not None:
                wholes, cuts, cut_captions = pairs
                loss = loss + cut_loss(clip, tokenizer, pixels_for_clip(wholes, size), pixels_for_clip(cuts, size),
                                       cut_captions)
            lr = args.lr * _cosine(k, args.steps, args.warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        if ema is not None:
            ema.update(clip, step)
        step += 1
        bar.update(1)
        total += float(loss.detach())
        n_acc += 1
        phase = "pretrain" if step <= pre else "contrastive"
        if step % args.log_every == 0 or step == total_steps or step == pre:
            log.write(event="train", phase=phase, step=step, loss=round(total / n_acc, 5), lr=lr)
            bar.set_postfix(phase=phase, loss=f"{total / n_acc:.3f}")
            total, n_acc = 0.0, 0
        if step % args.ckpt_every == 0 or step == total_steps:
            checkpoint()
        if args.eval_every and step % args.eval_every == 0:
            acc = zero_shot_accuracy(averaged(), tokenizer, n=200) if step > pre else pretrain_accuracy(clip, head)
            log.write(event="eval", phase=phase, step=step, **acc)
            bar.write(f"step {step} ({phase}): {acc}")
    bar.close()
    checkpoint()
    final = averaged()
    folder = export_clip(out / "clip", final, tokenizer)
    acc = zero_shot_accuracy(final, tokenizer)
    log.write(event="export", step=step, folder=str(folder), **acc)
    return {"step": step, "clip": str(folder), "zero_shot": acc}


@torch.no_grad()
def pretrain_accuracy(clip, head: ShapeHead, n: int = 256) -> dict[str, float]:
    """Held-out shape accuracy of the pretraining head (pretraining stream of seed 2**31 - 1)."""
    x, shapes = pretrain_batch(2**31 - 1, 0, n)
    logits = head.logits(clip, pixels_for_clip(x, clip.config.vision_config.image_size))
    return {"pretrain_shape": float((logits.argmax(1) == shapes).float().mean())}


def main(argv=None) -> None:
    print(json.dumps(train(parse_args(argv))))


if __name__ == "__main__":
    main()
