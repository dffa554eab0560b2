"""Train the world's text-to-image UNet on latents of a frozen VAE, with the CLIP text tower trained jointly.

    python -m bld.training.train_unet --vae runs/vae --out runs/unet --steps 4000 --batch 64 --seed 0 [--resume]
    python -m bld.training.train_unet --out runs/unet --export DIR   # write the pipeline folder from a checkpoint

Batch k holds items k*B .. k*B+B-1 of the world stream `seed` with their training captions (full, one
object's or the background's; scenes of 1-3 objects, so an object caption does not imply an empty scene).
Images are encoded on the fly by the frozen VAE (a latent sample times its scaling_factor), so a resumed
run sees exactly the data an uninterrupted one would have. Each step:

- classifier-free guidance dropout: `--cfg-drop` (10%) of the captions become "" (the pipelines' negative
  prompt is "", so the unconditional branch is exactly what guidance uses);
- epsilon-prediction loss on DDPM noise (SD's scaled_linear betas), weighted per sample by min-SNR-gamma
  (`--min-snr`, 5; 0 turns it off);
- `--clip-weight` x a CLIP contrastive loss between the images and their (undropped) captions, which trains
  the vision tower for ranking and shapes the shared text tower (0 turns it off);
- EMA of the UNet and the CLIP model (`--ema`).

Writes to --out: `log.jsonl`, `checkpoint/` (unet/ and clip/ as safetensors, optimizer, EMA, RNG state and
step in training_state.pt and meta.json: `--resume` continues from it) and, at the end and at every
`--export-every` steps, `pipeline/`: a standard diffusers StableDiffusionPipeline folder (EMA weights,
DDIM scheduler, no safety checker) that `StableDiffusionPipeline.from_pretrained` loads unchanged, with a
`clip/` subfolder holding the CLIPModel and tokenizer for `bld.ranking.ClipScorer`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..ranking import CLIP_MEAN, CLIP_STD
from . import EMA, JsonlLog, load_checkpoint_state, rng_state, save_checkpoint, set_rng_state, world_images
from .configs import CLIPConfig, UNetConfig, build_clip, build_scheduler, build_unet
from .tokenizer import write_vocab_files, write_world_tokenizer


def resolve_vae_folder(path: str | Path) -> Path:
    """A VAE folder: `path` itself, or `path/vae` as train_vae writes it."""
    path = Path(path)
    return path / "vae" if (path / "vae" / "config.json").exists() else path


def load_vae(path: str | Path):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(resolve_vae_folder(path)).eval()
    vae.requires_grad_(False)
    return vae


def text_encoder_from_clip(clip):
    """A transformers CLIPTextModel holding the CLIPModel's text tower (what SD pipelines condition on)."""
    from transformers import CLIPTextModel

    te = CLIPTextModel(clip.config.text_config)
    src = clip.text_model.state_dict()  # transformers 5: CLIPModel.text_model is itself a CLIPTextModel
    inner = getattr(te, "text_model", te)  # older transformers wrap the transformer in .text_model
    inner.load_state_dict({k.removeprefix("text_model."): v for k, v in src.items()})
    return te.eval()


def export_pipeline(folder: str | Path, *, unet, clip, vae, tokenizer) -> Path:
    """Write a standard diffusers StableDiffusionPipeline folder (safetensors, DDIM scheduler, no safety
    checker) to `folder`, with the CLIPModel and tokenizer in `folder/clip` for ranking."""
    from diffusers import StableDiffusionPipeline

    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder_from_clip(clip), tokenizer=tokenizer,
                                   unet=unet, scheduler=build_scheduler("ddim"), safety_checker=None,
                                   feature_extractor=None, image_encoder=None, requires_safety_checker=False)
    pipe.save_pretrained(tmp, safe_serialization=True)
    clip.save_pretrained(tmp / "clip", safe_serialization=True)
    tokenizer.save_pretrained(tmp / "clip")
    write_vocab_files(tmp / "tokenizer")  # the classic CLIP files too, for tokenizer loaders without tokenizer.json
    write_vocab_files(tmp / "clip")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def min_snr_weights(scheduler, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """min(SNR, gamma) / SNR per sample (epsilon prediction); ones when gamma <= 0."""
    if gamma <= 0:
        return torch.ones(len(t))
    ac = scheduler.alphas_cumprod[t]
    snr = ac / (1 - ac)
    return torch.clamp(snr, max=gamma) / snr


def clip_pixels(x: torch.Tensor, size: int) -> torch.Tensor:
    """Images in [-1, 1] -> CLIP-normalized pixels at `size` (as bld.ranking.ClipScorer prepares them)."""
    x = (x + 1) / 2
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def contrastive_loss(clip, ids: torch.Tensor, pixels: torch.Tensor, captions: list[str]) -> torch.Tensor:
    """Symmetric InfoNCE; pairs with identical captions count as positives (soft targets)."""
    text = clip.text_projection(clip.text_model(input_ids=ids).pooler_output)
    image = clip.visual_projection(clip.vision_model(pixel_values=pixels).pooler_output)
    logits = F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T * clip.logit_scale.exp().clamp(max=100)
    same = torch.tensor([[a == b for b in captions] for a in captions], dtype=torch.float32)
    target = same / same.sum(1, keepdim=True)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vae", type=Path, help="AutoencoderKL folder (or a train_vae --out folder)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--steps", type=int, default=4000, help="total steps (a resumed run continues to this)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint if it exists")
    p.add_argument("--lr", type=float, default=3e-4, help="UNet learning rate (a resumed run takes the one given now)")
    p.add_argument("--text-lr", type=float, default=1e-4, help="CLIP model learning rate")
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--cfg-drop", type=float, default=0.1, help="share of captions replaced by ''")
    p.add_argument("--min-snr", type=float, default=5.0, help="min-SNR-gamma weighting; 0 turns it off")
    p.add_argument("--clip-weight", type=float, default=0.1, help="CLIP contrastive loss weight; 0 turns it off")
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay; 0 turns EMA off")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--ckpt-every", type=int, default=100)
    p.add_argument("--export-every", type=int, default=0, help="also export pipeline/ every N steps (0: at the end)")
    p.add_argument("--export", type=Path, help="only export OUT/checkpoint (EMA weights) to this folder")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads; on the shared 2-core CPU 2 threads ran 12x slower than 1 (spin waits)")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def _build(args, out: Path):
    """The tokenizer (written to OUT/tokenizer), a freshly initialised UNet and CLIP model (seeded)."""
    tokenizer = write_world_tokenizer(out / "tokenizer")
    torch.manual_seed(args.seed)
    unet = build_unet(UNetConfig())
    clip = build_clip(tokenizer, CLIPConfig())
    return tokenizer, unet, clip


def train(args) -> dict:
    from safetensors.torch import load_file

    torch.set_num_threads(args.threads)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint"
    log = JsonlLog(out / "log.jsonl")
    tokenizer, unet, clip = _build(args, out)
    resumed = args.resume and (ckpt / "meta.json").exists()
    meta = json.loads((ckpt / "meta.json").read_text()) if resumed or args.export else None
    vae_path = args.vae or (meta and Path(meta["vae"]))
    if vae_path is None:
        raise SystemExit("--vae is required (or --resume/--export from a checkpoint that names it)")
    vae = load_vae(vae_path)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    if unet.config.sample_size * factor != vae.config.sample_size:
        unet.register_to_config(sample_size=vae.config.sample_size // factor)
    scheduler = build_scheduler("ddpm")

    opt = torch.optim.AdamW([{"params": unet.parameters(), "lr": args.lr, "base_lr": args.lr},
                             {"params": clip.parameters(), "lr": args.text_lr, "base_lr": args.text_lr}],
                            betas=(0.9, 0.999), weight_decay=1e-2)
    ema_unet = EMA(unet, args.ema) if args.ema > 0 else None
    ema_clip = EMA(clip, args.ema) if args.ema > 0 else None
    step = 0
    if resumed or args.export:
        _, state = load_checkpoint_state(ckpt)
        unet.load_state_dict(load_file(ckpt / "unet" / "diffusion_pytorch_model.safetensors"))
        clip.load_state_dict(load_file(ckpt / "clip" / "model.safetensors"), strict=False)
        if not args.export:
            opt.load_state_dict(state["optimizer"])
            for group, lr in zip(opt.param_groups, (args.lr, args.text_lr)):  # a resumed run may change them
                group["base_lr"] = lr
            set_rng_state(state["rng"])
        if ema_unet is not None and state.get("ema_unet") is not None:
            ema_unet.load_state_dict(state["ema_unet"])
            ema_clip.load_state_dict(state["ema_clip"])
        step = meta["step"]
        print(f"loaded {ckpt} at step {step}", file=sys.stderr)
    else:
        if args.resume:
            print(f"no checkpoint in {ckpt}; starting fresh", file=sys.stderr)
        log.write(event="start", args={k: str(v) for k, v in vars(args).items()},
                  unet_params=sum(p.numel() for p in unet.parameters()),
                  clip_params=sum(p.numel() for p in clip.parameters()))

    def averaged():
        """Copies of the UNet and CLIP model holding the EMA weights (the live ones without EMA)."""
        if ema_unet is None:
            return unet, clip
        u = build_unet(UNetConfig(), unet.config.sample_size)
        c = build_clip(tokenizer, CLIPConfig())
        ema_unet.copy_to(u)
        ema_clip.copy_to(c)
        return u.eval(), c.eval()

    def export(folder: Path) -> Path:
        u, c = averaged()
        return export_pipeline(folder, unet=u, clip=c, vae=vae, tokenizer=tokenizer)

    if args.export:
        return {"exported": str(export(args.export)), "step": step}

    def checkpoint():
        state = {"optimizer": opt.state_dict(), "rng": rng_state(),
                 "ema_unet": ema_unet.state_dict() if ema_unet else None,
                 "ema_clip": ema_clip.state_dict() if ema_clip else None}
        save_checkpoint(ckpt, models={"unet": unet, "clip": clip}, state=state,
                        meta={"step": step, "vae": str(resolve_vae_folder(vae_path).resolve()),
                              "args": {k: str(v) for k, v in vars(args).items()}})

    unet.train()
    clip.train()
    sf = float(vae.config.scaling_factor)
    max_len = tokenizer.model_max_length
    clip_size = clip.config.vision_config.image_size
    bar = tqdm(total=args.steps, initial=step, desc="unet", disable=args.no_progress,
               mininterval=1 if sys.stderr.isatty() else 30, dynamic_ncols=True)
    t_last, n_last = time.perf_counter(), step
    acc, n_acc = {"loss": 0.0, "diffusion": 0.0, "clip": 0.0}, 0
    while step < args.steps:
        x, captions = world_images(args.seed, step * args.batch, args.batch)
        with torch.no_grad():
            latents = vae.encode(x).latent_dist.sample() * sf
        keep = torch.rand(len(captions)) >= args.cfg_drop
        dropped = [c if k else "" for c, k in zip(captions, keep.tolist())]
        ids = tokenizer(dropped, padding="max_length", max_length=max_len, truncation=True,
                        return_tensors="pt").input_ids
        cond = clip.text_model(input_ids=ids).last_hidden_state
        noise = torch.randn_like(latents)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),))
        noisy = scheduler.add_noise(latents, noise, t)
        pred = unet(noisy, t, encoder_hidden_states=cond).sample
        per = F.mse_loss(pred, noise, reduction="none").flatten(1).mean(1)
        diffusion = (per * min_snr_weights(scheduler, t, args.min_snr)).mean()
        loss = diffusion
        c_loss = torch.zeros(())
        if args.clip_weight > 0:
            full_ids = tokenizer(captions, padding="max_length", max_length=max_len, truncation=True,
                                 return_tensors="pt").input_ids
            c_loss = contrastive_loss(clip, full_ids, clip_pixels(x, clip_size), captions)
            loss = loss + args.clip_weight * c_loss
        warm = min(1.0, (step + 1) / args.warmup)
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * warm
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(unet.parameters()) + list(clip.parameters()), 1.0)
        opt.step()
        if ema_unet is not None:
            ema_unet.update(unet, step)
            ema_clip.update(clip, step)
        step += 1
        bar.update(1)
        acc["loss"] += float(loss.detach())
        acc["diffusion"] += float(diffusion.detach())
        acc["clip"] += float(c_loss.detach())
        n_acc += 1
        if step % args.log_every == 0 or step == args.steps:
            now = time.perf_counter()
            line = {"event": "train", "step": step, **{k: round(v / n_acc, 6) for k, v in acc.items()},
                    "s_per_step": round((now - t_last) / max(1, step - n_last), 4)}
            log.write(**line)
            bar.set_postfix(loss=f"{line['loss']:.4f}")
            acc, n_acc = {"loss": 0.0, "diffusion": 0.0, "clip": 0.0}, 0
            t_last, n_last = now, step
        if step % args.ckpt_every == 0 or step == args.steps:
            checkpoint()
        if args.export_every and step % args.export_every == 0:
            export(out / "pipeline")
    bar.close()
    checkpoint()
    folder = export(out / "pipeline")
    log.write(event="export", step=step, folder=str(folder))
    return {"step": step, "pipeline": str(folder)}


def main(argv=None) -> None:
    print(json.dumps(train(parse_args(argv))))


if __name__ == "__main__":
    main()
