"""Tiny randomly initialised LDM text-to-image components (LDMBert, BERT tokenizer), built in code."""

from __future__ import annotations

import string
import tempfile
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import LDMBertConfig, LDMBertModel
from transformers import BertTokenizer

from .tiny_models import tiny_scheduler, tiny_vae

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def write_char_bert_tokenizer(folder: str | Path) -> BertTokenizer:
    """A lower-case BERT WordPiece tokenizer whose pieces are single characters (and their ## forms), so any
    ASCII text tokenizes; saved to `folder` and loaded from there."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = string.ascii_lowercase + string.digits + string.punctuation
    (folder / "vocab.txt").write_text("\n".join(SPECIAL + list(chars) + [f"##{c}" for c in chars]) + "\n")
    BertTokenizer(str(folder / "vocab.txt"), model_max_length=77).save_pretrained(folder)
    return BertTokenizer.from_pretrained(folder)


def tiny_ldm_components(seed: int = 0, tokenizer_dir: str | Path | None = None) -> dict:
    """Components for BlendedLatentDiffusionLDMPipeline: vqvae (a KL autoencoder), bert, tokenizer, unet,
    scheduler (DDIM, the paper's)."""
    tokenizer = write_char_bert_tokenizer(tokenizer_dir or tempfile.mkdtemp(prefix="bld-bert-"))
    torch.manual_seed(seed)
    bert = LDMBertModel(LDMBertConfig(vocab_size=len(tokenizer), max_position_embeddings=77, encoder_layers=2,
                                      encoder_ffn_dim=37, encoder_attention_heads=2, head_dim=16, d_model=32))
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32)
    torch.manual_seed(seed)
    vqvae = tiny_vae()
    return {"vqvae": vqvae.eval(), "bert": bert.eval(), "tokenizer": tokenizer, "unet": unet.eval(),
            "scheduler": tiny_scheduler()}
