"""SD3-medium and FLUX.1-dev architectures at their real widths with few blocks, random weights, offline.

For shape tests and timing (bld.testing.reference_architectures builds and fills them). Every width,
head count, channel count, VAE and scheduler setting is the released config's; only the depth is cut:
`layers` transformer blocks (SD3-medium has 24; FLUX.1-dev 19 double-stream and 38 single-stream) and
`text_layers` layers per text encoder (T5-XXL has 24, CLIP-L 12, OpenCLIP bigG 32). The T5 vocabulary is
the character tokenizer's 100 ids (bld.testing.tiny_flow_models), not T5's 32128, to keep memory for the
transformer. The time a step takes grows with the blocks, so compare pipelines at equal depth, never with
a full model's time.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel, SD3Transformer2DModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from .reference_architectures import (
    CLIP_VIT_L_TEXT,
    OPENCLIP_BIGG_TEXT,
    SD_VAE,
    _build,
    _text_encoder,
    _tokenizer_folder,
)
from .tiny_flow_models import write_t5_tokenizer
from .tiny_models import write_char_tokenizer

SD3_MEDIUM_TRANSFORMER = dict(
    sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24, attention_head_dim=64,
    num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048,
    pos_embed_max_size=192,
)
FLUX_DEV_TRANSFORMER = dict(
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)
FLOW_VAE = dict(SD_VAE, latent_channels=16, sample_size=1024, use_quant_conv=False, use_post_quant_conv=False)
SD3_VAE = dict(FLOW_VAE, scaling_factor=1.5305, shift_factor=0.0609)
FLUX_VAE = dict(FLOW_VAE, scaling_factor=0.3611, shift_factor=0.1159)
T5_XXL = dict(d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24, feed_forward_proj="gated-gelu",
              relative_attention_num_buckets=32, is_gated_act=True, dense_act_fn="gelu_new")
SD3_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0)
FLUX_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                      max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)


def _t5(layers: int, dtype: torch.dtype, seed: int) -> T5EncoderModel:
    config = T5Config(**dict(T5_XXL, num_layers=layers), vocab_size=100, decoder_start_token_id=0, pad_token_id=0,
                      eos_token_id=1)
    return _build(lambda: T5EncoderModel(config), dtype, seed)


def sd3_medium_components(layers: int = 2, text_layers: int = 2, dtype: torch.dtype = torch.float32,
                          tokenizer_dir: str | Path | None = None, seed: int = 0, t5: bool = True) -> dict:
    """SD3-medium's components at real width with `layers` of its 24 transformer blocks, for
    BlendedLatentDiffusionSD3Pipeline (and diffusers' SD3 pipelines). t5=False: no third text encoder."""
    folder = _tokenizer_folder(tokenizer_dir)
    tokenizer, tokenizer_2 = write_char_tokenizer(folder / "tokenizer"), write_char_tokenizer(folder / "tokenizer_2")
    return {
        "transformer": _build(lambda: SD3Transformer2DModel(**dict(SD3_MEDIUM_TRANSFORMER, num_layers=layers)),
                              dtype, seed),
        "vae": _build(lambda: AutoencoderKL(**SD3_VAE), dtype, seed + 1),
        "text_encoder": _text_encoder(CLIPTextModelWithProjection, dict(CLIP_VIT_L_TEXT, num_hidden_layers=text_layers),
                                      tokenizer, dtype, seed + 2),
        "text_encoder_2": _text_encoder(CLIPTextModelWithProjection,
                                        dict(OPENCLIP_BIGG_TEXT, num_hidden_layers=text_layers), tokenizer_2, dtype,
                                        seed + 3),
        "text_encoder_3": _t5(text_layers, dtype, seed + 4) if t5 else None,
        "tokenizer": tokenizer, "tokenizer_2": tokenizer_2,
        "tokenizer_3": write_t5_tokenizer(folder / "tokenizer_3") if t5 else None,
        "scheduler": FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER),
        "image_encoder": None, "feature_extractor": None,
    }


def flux_dev_components(layers: int = 1, single_layers: int = 1, text_layers: int = 1,
                        dtype: torch.dtype = torch.float32, tokenizer_dir: str | Path | None = None,
                        seed: int = 0) -> dict:
    """FLUX.1-dev's components at real width with `layers` double-stream and `single_layers` single-stream
    blocks, for BlendedLatentDiffusionFluxPipeline (and diffusers' FLUX pipelines)."""
    folder = _tokenizer_folder(tokenizer_dir)
    tokenizer = write_char_tokenizer(folder / "tokenizer")
    config = dict(FLUX_DEV_TRANSFORMER, num_layers=layers, num_single_layers=single_layers)
    return {
        "transformer": _build(lambda: FluxTransformer2DModel(**config), dtype, seed),
        "vae": _build(lambda: AutoencoderKL(**FLUX_VAE), dtype, seed + 1),
        "text_encoder": _text_encoder(CLIPTextModel, dict(CLIP_VIT_L_TEXT, num_hidden_layers=text_layers), tokenizer,
                                      dtype, seed + 2),
        "text_encoder_2": _t5(text_layers, dtype, seed + 3),
        "tokenizer": tokenizer, "tokenizer_2": write_t5_tokenizer(folder / "tokenizer_2"),
        "scheduler": FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER),
        "image_encoder": None, "feature_extractor": None,
    }
