"""Train the world's text-to-image UNet on latents of a frozen VAE, conditioned on a frozen CLIP text tower.

    python -m bld.world.training.train_unet --vae runs/vae --clip runs/clip --out runs/unet --steps 8000 --batch 64 --seed 0 [--resume]
    python -m bld.world.training.train_unet --out runs/unet --export DIR   # write the pipeline folder from a checkpoint

As in Stable Diffusion, the text encoder is trained first (`bld.world.training.train_clip`) and stays frozen
here: its last hidden states are the UNet's cross-attention context. (Trained jointly with the UNet, the
text tower had learned colors and not shapes.) `--init-unet` starts from another UNet's weights with a
fresh optimizer: the bundled UNet starts from the one trained with the earlier joint recipe, which could
draw the world but not tell its shapes apart (README, "The bundled model").

Batch k holds items k*B .. k*B+B-1 of the world stream `seed` with their training captions (full, one
object's or the background's; scenes of 1-3 objects, so an object caption does not imply an empty scene).
Images are encoded on the fly by the frozen VAE (a latent sample times its scaling_factor), so a resumed
run sees exactly the data an uninterrupted one would have. Each step:

- classifier-free guidance dropout: `--cfg-drop` (10%) of the captions become "" (the pipelines' negative
  prompt is "", so the unconditional branch is exactly what guidance uses);
- epsilon-prediction loss on DDPM noise (SD's scaled_linear betas), weighted per sample by min-SNR-gamma
  (`--min-snr`, 5; 0 turns it off);
- EMA of the UNet (`--ema`);
- AdamW at `--lr` after a linear warmup, optionally decayed linearly to `--lr-final` from `--decay-start`
  to `--steps` (logged with each loss).

Writes to --out: `log.jsonl`, `checkpoint/` (unet/ as safetensors, optimizer, EMA, RNG state and step in
training_state.pt and meta.json, which names the VAE and CLIP folders, relative to the working directory
when inside it: `--resume` continues from it) and,
at the end and at every `--export-every` steps, `pipeline/`: a standard diffusers StableDiffusionPipeline
folder (EMA weights, DDIM scheduler, no safety checker) that `StableDiffusionPipeline.from_pretrained`
loads unchanged, with a `clip/` subfolder holding the CLIPModel and tokenizer for `bld.ranking.ClipScorer`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ...model_defaults import EDIT_DEFAULTS_FILE
from . import (
    EMA,
    JsonlLog,
    folder_written_atomically,
    load_checkpoint_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
    world_images,
)
from .configs import WORLD_EDIT_DEFAULTS, UNetConfig, build_scheduler, build_unet
from .tokenizer import clear_call_state, write_vocab_files
from .train_clip import export_clip


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
    checker) to `folder`, with the CLIPModel and tokenizer in `folder/clip` for ranking, and the world's
    recommended edit settings (configs.WORLD_EDIT_DEFAULTS)."""
    from diffusers import StableDiffusionPipeline

    clear_call_state(tokenizer)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder_from_clip(clip), tokenizer=tokenizer,
                                   unet=unet, scheduler=build_scheduler("ddim"), safety_checker=None,
                                   feature_extractor=None, image_encoder=None, requires_safety_checker=False)
    with folder_written_atomically(folder) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        export_clip(tmp / "clip", clip, tokenizer)
        write_vocab_files(tmp / "tokenizer")  # the classic CLIP files, for loaders without tokenizer.json
        (tmp / EDIT_DEFAULTS_FILE).write_text(json.dumps(WORLD_EDIT_DEFAULTS, indent=2) + "\n")
    return Path(folder)


def min_snr_weights(scheduler, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """min(SNR, gamma) / SNR per sample (epsilon prediction); ones when gamma <= 0."""
    if gamma <= 0:
        return torch.ones(len(t))
    ac = scheduler.alphas_cumprod[t]
    snr = ac / (1 - ac)
    return torch.clamp(snr, max=gamma) / snr


def lr_factor(step: int, *, lr: float, lr_final: float | None, decay_start: int, steps: int, warmup: int) -> float:
    """The multiplier of `lr` for the update after `step` updates: a linear warmup over `warmup` steps, then,
    with `lr_final`, a linear decay from `lr` at `decay_start` to `lr_final` at `steps`."""
    factor = min(1.0, (step + 1) / warmup)
    if lr_final is not None and lr > 0 and step >= decay_start and steps > decay_start:
        done = min(1.0, (step - decay_start) / (steps - decay_start))
        factor *= 1 + (lr_final / lr - 1) * done
    return factor


def resolve_clip_folder(path: str | Path) -> Path:
    """A CLIPModel folder: `path` itself, or `path/clip` as train_clip writes it."""
    path = Path(path)
    return path / "clip" if (path / "clip" / "config.json").exists() else path


def load_frozen_clip(path: str | Path):
    """(CLIPModel in eval mode without gradients, its tokenizer) from a folder train_clip wrote."""
    from transformers import CLIPModel, CLIPTokenizer

    folder = resolve_clip_folder(path)
    clip = CLIPModel.from_pretrained(folder).eval()
    clip.requires_grad_(False)
    return clip, CLIPTokenizer.from_pretrained(folder)


def portable_path(path: Path) -> str:
    """`path` relative to the working directory when it lies inside it (a checkpoint committed with the
    repository then resumes from the repository root on any machine), else absolute."""
    path, cwd = path.resolve(), Path.cwd().resolve()
    return str(path.relative_to(cwd)) if path.is_relative_to(cwd) else str(path)


def text_tower_digest(clip) -> str:
    """SHA-256 of the text tower's weights: a UNet is only valid with the text tower it was trained on."""
    import hashlib

    h = hashlib.sha256()
    for name, tensor in sorted(clip.text_model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vae", type=Path, help="AutoencoderKL folder (or a train_vae --out folder)")
    p.add_argument("--clip", type=Path, help="CLIPModel folder (or a train_clip --out folder); frozen")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--init-unet", type=Path, help="start from this UNet2DConditionModel folder's weights (fresh optimizer)")
    p.add_argument("--steps", type=int, default=8000, help="total steps (a resumed run continues to this)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint if it exists")
    p.add_argument("--lr", type=float, default=3e-4, help="learning rate (a resumed run takes the one given now)")
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--lr-final", type=float, default=None,
                   help="decay the learning rate linearly to this by --steps (default: constant)")
    p.add_argument("--decay-start", type=int, default=0, help="step where the linear decay to --lr-final begins")
    p.add_argument("--cfg-drop", type=float, default=0.1, help="share of captions replaced by ''")
    p.add_argument("--min-snr", type=float, default=5.0, help="min-SNR-gamma weighting; 0 turns it off")
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay; 0 turns EMA off")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--ckpt-every", type=int, default=100)
    p.add_argument("--export-every", type=int, default=0, help="also export pipeline/ every N steps (0: at the end)")
    p.add_argument("--export", type=Path, help="only export OUT/checkpoint (EMA weights) to this folder")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def _required_folder(given: Path | None, meta: dict | None, key: str) -> Path:
    folder = given or (meta and meta.get(key) and Path(meta[key]))
    if not folder:
        raise SystemExit(f"--{key} is required (or --resume/--export from a checkpoint that names it)")
    return folder


def train(args) -> dict:
    from safetensors.torch import load_file

    torch.set_num_threads(args.threads)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint"
    log = JsonlLog(out / "log.jsonl")
    resumed = args.resume and (ckpt / "meta.json").exists()
    meta = json.loads((ckpt / "meta.json").read_text()) if resumed or args.export else None
    vae_path, clip_path = _required_folder(args.vae, meta, "vae"), _required_folder(args.clip, meta, "clip")
    vae = load_vae(vae_path)
    clip, tokenizer = load_frozen_clip(clip_path)
    digest = text_tower_digest(clip)
    folders = {"vae": portable_path(resolve_vae_folder(vae_path)),  # as meta.json names them
               "clip": portable_path(resolve_clip_folder(clip_path))}
    if meta and meta.get("text_tower_sha256", digest) != digest:
        raise SystemExit(f"the CLIP model in {clip_path} has another text tower than the one this UNet was trained "
                         "on; pass --clip with that one (a train_clip --freeze-text run keeps it)")
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    torch.manual_seed(args.seed)
    unet = build_unet(UNetConfig(), vae.config.sample_size // factor, vae.config.latent_channels)
    if unet.config.cross_attention_dim != clip.config.text_config.hidden_size:
        raise SystemExit(f"the UNet's cross-attention dim {unet.config.cross_attention_dim} is not the text "
                         f"tower's hidden size {clip.config.text_config.hidden_size}")
    scheduler = build_scheduler("ddpm")

    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, betas=(0.9, 0.999), weight_decay=1e-2)
    ema = EMA(unet, args.ema) if args.ema > 0 else None
    step = 0
    if resumed or args.export:
        _, state = load_checkpoint_state(ckpt)
        unet.load_state_dict(load_file(ckpt / "unet" / "diffusion_pytorch_model.safetensors"))
        if not args.export:
            opt.load_state_dict(state["optimizer"])
            for group in opt.param_groups:  # a resumed run takes the learning rate given now
                group["base_lr"] = args.lr
            set_rng_state(state["rng"])
        if ema is not None and state.get("ema_unet") is not None:
            ema.load_state_dict(state["ema_unet"])
        step = meta["step"]
        print(f"loaded {ckpt} at step {step}", file=sys.stderr)
        if not args.export:
            log.rewind(step)
    else:
        if args.resume:
            print(f"no checkpoint in {ckpt}; starting fresh", file=sys.stderr)
        if args.init_unet:
            unet.load_state_dict(load_file(Path(args.init_unet) / "diffusion_pytorch_model.safetensors"))
            if ema is not None:
                ema = EMA(unet, args.ema)
        for group in opt.param_groups:
            group["base_lr"] = args.lr
        log.write(event="start", args={k: str(v) for k, v in vars(args).items()},
                  unet_params=sum(p.numel() for p in unet.parameters()))

    def export(folder: Path) -> Path:
        u = unet
        if ema is not None:
            u = build_unet(UNetConfig(), unet.config.sample_size, unet.config.in_channels)
            ema.copy_to(u)
        return export_pipeline(folder, unet=u.eval(), clip=clip, vae=vae, tokenizer=tokenizer)

    if args.export:
        return {"exported": str(export(args.export)), "step": step}

    def checkpoint():
        state = {"optimizer": opt.state_dict(), "rng": rng_state(), "ema_unet": ema.state_dict() if ema else None}
        save_checkpoint(ckpt, models={"unet": unet}, state=state,
                        meta={"step": step, **folders, "text_tower_sha256": digest,
                              "args": {k: str(v) for k, v in vars(args).items()}})

    unet.train()
    sf = float(vae.config.scaling_factor)
    max_len = tokenizer.model_max_length
    bar = tqdm(total=args.steps, initial=step, desc="unet", disable=args.no_progress,
               mininterval=1 if sys.stderr.isatty() else 30, dynamic_ncols=True)
    t_last, n_last = time.perf_counter(), step
    total, n_acc = 0.0, 0
    while step < args.steps:
        x, captions = world_images(args.seed, step * args.batch, args.batch)
        keep = torch.rand(len(captions)) >= args.cfg_drop
        dropped = [c if k else "" for c, k in zip(captions, keep.tolist())]
        ids = tokenizer(dropped, padding="max_length", max_length=max_len, truncation=True,
                        return_tensors="pt").input_ids
        with torch.no_grad():
            latents = vae.encode(x).latent_dist.sample() * sf
            cond = clip.text_model(input_ids=ids).last_hidden_state
        noise = torch.randn_like(latents)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),))
        noisy = scheduler.add_noise(latents, noise, t)
        pred = unet(noisy, t, encoder_hidden_states=cond).sample
        per = F.mse_loss(pred, noise, reduction="none").flatten(1).mean(1)
        loss = (per * min_snr_weights(scheduler, t, args.min_snr)).mean()
        factor = lr_factor(step, lr=args.lr, lr_final=args.lr_final, decay_start=args.decay_start,
                           steps=args.steps, warmup=args.warmup)
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * factor
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        if ema is not None:
            ema.update(unet, step)
        step += 1
        bar.update(1)
        total += float(loss.detach())
        n_acc += 1
        if step % args.log_every == 0 or step == args.steps:
            now = time.perf_counter()
            log.write(event="train", step=step, loss=round(total / n_acc, 6),
                      lr=float(f"{opt.param_groups[0]['lr']:.4g}"),
                      s_per_step=round((now - t_last) / max(1, step - n_last), 4))
            bar.set_postfix(loss=f"{total / n_acc:.4f}")
            total, n_acc = 0.0, 0
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
