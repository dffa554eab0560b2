"""Train the world's AutoencoderKL on scenes rendered on the fly.

    python -m bld.world.training.train_vae --out runs/vae --steps 20000 --batch 16 --seed 0 [--resume]

Batch k holds items k*B .. k*B+B-1 of the world stream `seed` (bld.world.scenes.sample_batch), so a run is
reproducible from its seed and a resumed run sees the same data it would have seen uninterrupted.
Loss: MSE + `--edge` x L1 of the image gradients (keeps corners and thin stripes sharp) + `--kl` x KL
(SD's weighting: KL summed over the latent, against the reconstruction summed over pixels).
Held-out PSNR (dB, [0, 1] scale) on a fixed set from another stream is logged every `--eval-every` steps.

Writes to --out: `log.jsonl` (one JSON line per log step and per evaluation), `checkpoint/` (model and
EMA weights as safetensors, optimizer, EMA and RNG state, step: `--resume` continues from it) and `vae/`,
the best of the model and its EMA as a diffusers AutoencoderKL folder whose config's scaling_factor is
1 / (std of the held-out latents), ready for `train_unet --vae`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import (
    EMA,
    JsonlLog,
    folder_written_atomically,
    load_checkpoint_state,
    psnr,
    rng_state,
    save_checkpoint,
    set_rng_state,
    world_images,
)
from .configs import VAEConfig, build_vae

HELDOUT_SEED_OFFSET = 1_000_003  # held-out stream: seed + this, never trained on


def edge_loss(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """L1 between horizontal and vertical finite differences."""
    dx = lambda t: t[..., :, 1:] - t[..., :, :-1]  # noqa: E731
    dy = lambda t: t[..., 1:, :] - t[..., :-1, :]  # noqa: E731
    return (dx(x_hat) - dx(x)).abs().mean() + (dy(x_hat) - dy(x)).abs().mean()


def lr_at(step: int, args) -> float:
    """Linear warm-up, then cosine decay to `lr_min_ratio` x lr at `--steps`."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    t = min(1.0, (step - args.warmup) / max(1, args.steps - args.warmup))
    return args.lr * (args.lr_min_ratio + (1 - args.lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


@torch.no_grad()
def evaluate(vae, x: torch.Tensor, batch: int = 64) -> tuple[float, float]:
    """(PSNR of mode reconstructions, std of the latent means) over the images x."""
    was = vae.training
    vae.eval()
    recs, lats = [], []
    for i in range(0, len(x), batch):
        z = vae.encode(x[i:i + batch]).latent_dist.mode()
        lats.append(z)
        recs.append(vae.decode(z).sample)
    vae.train(was)
    return psnr(torch.cat(recs), x), float(torch.cat(lats).std())


def export_vae(vae, folder: Path, latent_std: float) -> None:
    vae.register_to_config(scaling_factor=float(1.0 / max(latent_std, 1e-6)))
    with folder_written_atomically(folder) as tmp:
        vae.save_pretrained(tmp, safe_serialization=True)


@torch.no_grad()
def reconstruction_report(vae, seed: int, n: int = 256, batch: int = 64) -> dict:
    """Judge-independent figures of mode reconstructions of n held-out scenes (stream seed + offset):
    PSNR over the image, inside the objects and on the background; per object, the error (0-255 RGB
    distance) of its mean color inside its eroded silhouette, how often that mean is nearest to the right
    palette color, and the IoU of the pixels closer to the object's color than to the background's colors
    in the reconstruction vs the original (corners rounded or colors bled lower it)."""
    import numpy as np
    from scipy.ndimage import binary_erosion

    from ..scenes import COLORS, sample_batch

    names = list(COLORS)
    palette = np.array([COLORS[c] for c in names], np.float32)
    items = sample_batch(seed + HELDOUT_SEED_OFFSET, n)
    x = torch.from_numpy(np.stack([np.asarray(im, np.float32) for im, _, _ in items])).permute(0, 3, 1, 2) / 127.5 - 1
    vae.eval()
    rec = torch.cat([vae.decode(vae.encode(x[i:i + batch]).latent_dist.mode()).sample for i in range(0, n, batch)])
    orig = ((x + 1) * 127.5).permute(0, 2, 3, 1).numpy()
    out = ((rec.clamp(-1, 1) + 1) * 127.5).permute(0, 2, 3, 1).numpy()
    se_obj = se_bg = n_obj = n_bg = 0.0
    color_err, color_ok, ious = [], [], []
    for k, (_, _, scene) in enumerate(items):
        err = ((out[k] - orig[k]) / 255.0) ** 2
        union = np.zeros(err.shape[:2], bool)
        bg_rgb = np.array(scene.background.rgb(), np.float32)
        for i, obj in enumerate(scene.objects):
            m = scene.object_mask(i)
            for later in scene.objects[i + 1:]:  # occluded parts belong to the later object
                m &= ~scene.object_mask(scene.objects.index(later))
            union |= m
            core = binary_erosion(m, iterations=2)
            if core.sum() >= 4:
                mean = out[k][core].mean(0)
                color_err.append(float(np.linalg.norm(mean - np.array(COLORS[obj.color], np.float32))))
                color_ok.append(names[int(np.argmin(np.linalg.norm(palette - mean, axis=1)))] == obj.color)
            x0, y0, x1, y1 = scene.object_box(i)
            rgb = np.array(COLORS[obj.color], np.float32)

            def objectness(img):
                patch = img[y0:y1, x0:x1]
                d_obj = np.linalg.norm(patch - rgb, axis=-1)
                d_bg = np.linalg.norm(patch[..., None, :] - bg_rgb, axis=-1).min(-1)
                return d_obj < d_bg

            a, b = objectness(orig[k]), objectness(out[k])
            if (a | b).sum():
                ious.append(float((a & b).sum() / (a | b).sum()))
        se_obj += err[union].sum()
        n_obj += union.sum() * 3
        se_bg += err[~union].sum()
        n_bg += (~union).sum() * 3
    db = lambda mse: round(float(10 * np.log10(1 / max(mse, 1e-10))), 3)  # noqa: E731
    return {"images": n, "psnr": round(psnr(rec, x), 3), "psnr_objects": db(se_obj / max(n_obj, 1)),
            "psnr_background": db(se_bg / max(n_bg, 1)), "objects": len(color_err),
            "object_color_error_rgb": round(float(np.mean(color_err)), 2),
            "object_color_nearest_correct": round(float(np.mean(color_ok)), 4),
            "object_shape_iou": round(float(np.mean(ious)), 4)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--steps", type=int, default=20000, help="total steps (a resumed run continues to this)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint if it exists")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-min-ratio", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--kl", type=float, default=1e-6)
    p.add_argument("--edge", type=float, default=0.1)
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay; 0 turns EMA off")
    p.add_argument("--channels", default="16,32,64", help="VAE block_out_channels")
    p.add_argument("--groups", type=int, default=8, help="VAE norm_num_groups")
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--eval-n", type=int, default=128, help="held-out images")
    p.add_argument("--ckpt-every", type=int, default=250)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads; on the shared 2-core CPU 2 threads ran 12x slower than 1 (spin waits)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--report", action="store_true",
                   help="train nothing: print reconstruction_report of OUT/vae on --eval-n held-out scenes")
    return p.parse_args(argv)


def train(args) -> dict:
    torch.set_num_threads(args.threads)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint"
    log = JsonlLog(out / "log.jsonl")
    cfg = VAEConfig(block_out_channels=tuple(int(c) for c in args.channels.split(",")), norm_num_groups=args.groups)

    torch.manual_seed(args.seed)
    vae = build_vae(cfg).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
    ema = EMA(vae, args.ema) if args.ema > 0 else None
    step, best = 0, {"psnr": -1.0}
    if args.resume and (ckpt / "meta.json").exists():
        meta, state = load_checkpoint_state(ckpt)
        if meta["vae_config"]["block_out_channels"] != list(cfg.block_out_channels):
            raise SystemExit(f"checkpoint has channels {meta['vae_config']['block_out_channels']}, "
                             f"not {list(cfg.block_out_channels)}")
        if "model" in state:  # checkpoints of the first version kept the weights in training_state.pt
            vae.load_state_dict(state["model"])
        else:
            from safetensors.torch import load_file

            vae.load_state_dict(load_file(ckpt / "vae" / "diffusion_pytorch_model.safetensors"))
        opt.load_state_dict(state["optimizer"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        set_rng_state(state["rng"])
        step, best = meta["step"], meta.get("best", best)
        print(f"resumed from {ckpt} at step {step}", file=sys.stderr)
        log.rewind(step)
    else:
        if args.resume:
            print(f"no checkpoint in {ckpt}; starting fresh", file=sys.stderr)
        log.write(event="start", args={k: str(v) for k, v in vars(args).items()}, params=sum(
            p.numel() for p in vae.parameters()))

    heldout, _ = world_images(args.seed + HELDOUT_SEED_OFFSET, 0, args.eval_n)
    ema_model = build_vae(cfg) if ema is not None else None

    def checkpoint():
        state = {"optimizer": opt.state_dict(),
                 "ema": ema.state_dict() if ema is not None else None, "rng": rng_state()}
        meta = {"step": step, "best": best, "vae_config": {**vars(cfg), "block_out_channels": list(
            cfg.block_out_channels)}, "args": {k: str(v) for k, v in vars(args).items()}}
        save_checkpoint(ckpt, models={"vae": vae}, state=state, meta=meta)

    def run_eval():
        nonlocal best
        p_raw, std_raw = evaluate(vae, heldout)
        rec = {"event": "eval", "step": step, "heldout_psnr": round(p_raw, 3), "latent_std": round(std_raw, 4)}
        candidates = [(p_raw, std_raw, vae, "model")]
        if ema is not None:
            ema.copy_to(ema_model)
            p_ema, std_ema = evaluate(ema_model, heldout)
            rec.update(heldout_psnr_ema=round(p_ema, 3), latent_std_ema=round(std_ema, 4))
            candidates.append((p_ema, std_ema, ema_model, "ema"))
        p, std, model, which = max(candidates, key=lambda c: c[0])
        export_vae(model, out / "vae", std)  # the latest weights; `best` only records the figures
        if p > best["psnr"]:
            best = {"psnr": round(p, 3), "step": step, "which": which}
        log.write(**rec)
        return rec

    bar = tqdm(total=args.steps, initial=step, desc="vae", disable=args.no_progress,
               mininterval=1 if sys.stderr.isatty() else 30, dynamic_ncols=True)
    t_last, n_last = time.perf_counter(), step
    acc = {"loss": 0.0, "mse": 0.0, "kl": 0.0, "edge": 0.0, "psnr": 0.0, "n": 0}
    rec = None
    while step < args.steps:
        x, _ = world_images(args.seed, step * args.batch, args.batch)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args)
        post = vae.encode(x).latent_dist
        x_hat = vae.decode(post.sample()).sample
        mse = F.mse_loss(x_hat, x)
        kl = post.kl().mean() / x[0].numel()
        ed = edge_loss(x_hat, x)
        loss = mse + args.edge * ed + args.kl * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if ema is not None:
            ema.update(vae, step)
        step += 1
        bar.update(1)
        for k, v in (("loss", loss), ("mse", mse), ("kl", kl), ("edge", ed)):
            acc[k] += float(v.detach())
        acc["psnr"] += psnr(x_hat.detach(), x)
        acc["n"] += 1
        if step % args.log_every == 0 or step == args.steps:
            now = time.perf_counter()
            n = acc.pop("n")
            line = {"event": "train", "step": step, **{k: round(v / n, 6) for k, v in acc.items()},
                    "lr": lr_at(step - 1, args), "s_per_step": round((now - t_last) / max(1, step - n_last), 4)}
            log.write(**line)
            bar.set_postfix(loss=f"{line['loss']:.4f}", psnr=f"{line['psnr']:.2f}")
            acc = {"loss": 0.0, "mse": 0.0, "kl": 0.0, "edge": 0.0, "psnr": 0.0, "n": 0}
            t_last, n_last = now, step
        if step % args.eval_every == 0 or step == args.steps:
            rec = run_eval()
            bar.write(json.dumps(rec))
        if step % args.ckpt_every == 0 or step == args.steps:
            checkpoint()
        t_last = t_last if step % args.eval_every else time.perf_counter()  # eval time is not step time
    bar.close()
    if rec is None or rec["step"] != step:
        rec = run_eval()
        checkpoint()
    return {"step": step, "best": best, "last": rec}


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.report:
        from diffusers import AutoencoderKL

        torch.set_num_threads(args.threads)
        vae = AutoencoderKL.from_pretrained(args.out / "vae" if (args.out / "vae").is_dir() else args.out)
        print(json.dumps(reconstruction_report(vae, args.seed, args.eval_n)))
        return
    result = train(parse_args(argv))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
