"""Tiny randomly initialised SD and SDXL components, built in code (no download).

They follow the diffusers test recipe (UNet channels (32, 64), cross-attention 32, 64 px images) and
serve the tests and the offline demo. Their outputs are noise-like: they exercise the code, not quality.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer


def byte_symbols() -> list[str]:
    """The 256 printable stand-ins that byte-level BPE tokenizers (GPT-2, CLIP) use for raw bytes."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    codes, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def write_char_tokenizer(folder: str | Path, *, model_max_length: int = 77) -> CLIPTokenizer:
    """Write a character-level CLIP tokenizer (vocab.json, merges.txt, configs) to `folder` and load it.

    Every byte is a token (with and without the end-of-word marker), there are no merges, so any text
    tokenizes; ids stay below 520.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    symbols = byte_symbols()
    vocab_list = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab_list)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                              model_max_length=model_max_length)
    tokenizer.save_pretrained(folder)
    return CLIPTokenizer.from_pretrained(folder)


def _text_config(hidden: int, projection: int | None = None) -> CLIPTextConfig:
    return CLIPTextConfig(bos_token_id=len(byte_symbols()) * 2, eos_token_id=len(byte_symbols()) * 2 + 1,
                          pad_token_id=len(byte_symbols()) * 2 + 1, hidden_size=hidden, intermediate_size=37,
                          layer_norm_eps=1e-5, num_attention_heads=4, num_hidden_layers=5, vocab_size=1000,
                          hidden_act="gelu", projection_dim=projection or hidden, max_position_embeddings=77)


def tiny_vae() -> AutoencoderKL:
    return AutoencoderKL(block_out_channels=[32, 64], in_channels=3, out_channels=3,
                         down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                         latent_channels=4, norm_num_groups=32, sample_size=64)


def tiny_scheduler() -> DDIMScheduler:
    """DDIM configured as the official SD 2.1 script (PAPER.md section 1)."""
    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def tiny_sd_components(seed: int = 0, tokenizer_dir: str | Path | None = None) -> dict:
    """Components for BlendedLatentDiffusionPipeline; the tokenizer files go to `tokenizer_dir` (or a temp dir)."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                norm_num_groups=32)
    torch.manual_seed(seed)
    vae = tiny_vae()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_text_config(32))
    tokenizer = write_char_tokenizer(tokenizer_dir or tempfile.mkdtemp(prefix="bld-tokenizer-"))
    return {"unet": unet.eval(), "vae": vae.eval(), "text_encoder": text_encoder.eval(), "tokenizer": tokenizer,
            "scheduler": tiny_scheduler(), "safety_checker": None, "feature_extractor": None,
            "image_encoder": None, "requires_safety_checker": False}


def tiny_sdxl_components(seed: int = 0, tokenizer_dir: str | Path | None = None) -> dict:
    """Components for BlendedLatentDiffusionXLPipeline: two text encoders, size and crop conditioning."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
                                use_linear_projection=True, addition_embed_type="text_time",
                                addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
                                projection_class_embeddings_input_dim=80, cross_attention_dim=64,
                                norm_num_groups=1)
    torch.manual_seed(seed)
    vae = tiny_vae()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_text_config(32))
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(32, projection=32))
    folder = Path(tokenizer_dir or tempfile.mkdtemp(prefix="bld-tokenizer-"))
    tokenizer = write_char_tokenizer(folder / "tokenizer")
    tokenizer_2 = write_char_tokenizer(folder / "tokenizer_2")
    return {"unet": unet.eval(), "vae": vae.eval(), "text_encoder": text_encoder.eval(),
            "text_encoder_2": text_encoder_2.eval(),
            "tokenizer": tokenizer, "tokenizer_2": tokenizer_2, "scheduler": tiny_scheduler(),
            "image_encoder": None, "feature_extractor": None}
