"""Tiny randomly initialised SD3 and FLUX.1 components, built in code (no download), tokenizers included.

They keep what makes these families differ from SD: a 16-channel VAE with a shift factor, transformer
tokens of 2x2 latent cells (SD3's patch size 2, FLUX's packing), CLIP plus T5 text encoders, and a
flow-matching scheduler (SD3.5's shift 3, FLUX's resolution-dependent shift). Noise-like outputs: they
exercise the code, not quality.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel, SD3Transformer2DModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel, T5TokenizerFast

from .tiny_models import _text_config, write_char_tokenizer

T5_WIDTH = 64  # the tiny T5's d_model, which the transformers' joint attention takes


def write_t5_tokenizer(folder: str | Path, *, model_max_length: int = 512) -> T5TokenizerFast:
    """Write a character-level T5 tokenizer (a Unigram over printable ASCII, word starts marked) to `folder`
    and load it: any text tokenizes, ids stay below 100."""
    chars = [chr(c) for c in range(33, 127)]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)] + [(c, -3.0) for c in chars]
    tokenizer = T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=model_max_length)
    tokenizer.save_pretrained(folder)
    return T5TokenizerFast.from_pretrained(folder)


def tiny_t5(seed: int) -> T5EncoderModel:
    torch.manual_seed(seed)
    return T5EncoderModel(T5Config(vocab_size=100, d_model=T5_WIDTH, d_ff=64, d_kv=16, num_layers=1, num_heads=4,
                                   relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0,
                                   eos_token_id=1)).eval()


def tiny_flow_vae(seed: int, shift_factor: float, scaling_factor: float) -> AutoencoderKL:
    """A 16-channel VAE at factor 2 without quant convs, as SD3's and FLUX's are (at factor 8)."""
    torch.manual_seed(seed)
    return AutoencoderKL(block_out_channels=[32, 64], in_channels=3, out_channels=3,
                         down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                         latent_channels=16, norm_num_groups=32, sample_size=64, use_quant_conv=False,
                         use_post_quant_conv=False, shift_factor=shift_factor, scaling_factor=scaling_factor).eval()


def tiny_sd3_components(seed: int = 0, tokenizer_dir: str | Path | None = None) -> dict:
    """Components for BlendedLatentDiffusionSD3Pipeline: two CLIPs and a T5, the SD3 transformer (patch 2,
    native 64 px), SD3.5's scheduler (shift 3)."""
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(sample_size=32, patch_size=2, in_channels=16, out_channels=16, num_layers=1,
                                        attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
                                        joint_attention_dim=T5_WIDTH, pooled_projection_dim=64, pos_embed_max_size=32)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModelWithProjection(_text_config(32, projection=32))
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(32, projection=32))
    folder = Path(tokenizer_dir or tempfile.mkdtemp(prefix="bld-tokenizer-"))
    return {"transformer": transformer.eval(), "vae": tiny_flow_vae(seed, 0.0609, 1.5305),
            "text_encoder": text_encoder.eval(), "text_encoder_2": text_encoder_2.eval(),
            "text_encoder_3": tiny_t5(seed), "tokenizer": write_char_tokenizer(folder / "tokenizer"),
            "tokenizer_2": write_char_tokenizer(folder / "tokenizer_2"),
            "tokenizer_3": write_t5_tokenizer(folder / "tokenizer_3"),
            "scheduler": FlowMatchEulerDiscreteScheduler(shift=3.0), "image_encoder": None,
            "feature_extractor": None}


def tiny_flux_components(seed: int = 0, tokenizer_dir: str | Path | None = None) -> dict:
    """Components for BlendedLatentDiffusionFluxPipeline: CLIP and T5, a FLUX transformer with distilled
    guidance on 2x2-cell tokens, FLUX's scheduler with its shift set for 64 to 256 tokens (64 px native)."""
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=T5_WIDTH,
                                         pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 6, 6))
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_text_config(32))
    folder = Path(tokenizer_dir or tempfile.mkdtemp(prefix="bld-tokenizer-"))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=64, max_image_seq_len=256)
    return {"transformer": transformer.eval(), "vae": tiny_flow_vae(seed, 0.1159, 0.3611),
            "text_encoder": text_encoder.eval(), "text_encoder_2": tiny_t5(seed),
            "tokenizer": write_char_tokenizer(folder / "tokenizer"),
            "tokenizer_2": write_t5_tokenizer(folder / "tokenizer_2"), "scheduler": scheduler,
            "image_encoder": None, "feature_extractor": None}
