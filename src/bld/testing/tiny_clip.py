"""A tiny randomly initialised CLIPModel, built in code (no download), for tests and the offline demo.

It is saved with the character-level tokenizer of `bld.testing.tiny_models.write_char_tokenizer`, so the folder
loads like any transformers CLIP checkpoint. Its scores are meaningless: it exercises the code only.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

from ..ranking import ClipScorer
from .tiny_models import write_char_tokenizer


def tiny_clip_model(tokenizer, seed: int = 0) -> CLIPModel:
    """A CLIPModel with 32-wide text and vision towers (2 layers each), 32 px images, patch 4, projection 32."""
    text = CLIPTextConfig(vocab_size=max(1000, len(tokenizer)), hidden_size=32, intermediate_size=37,
                          num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id, layer_norm_eps=1e-5, hidden_act="gelu")
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                              image_size=32, patch_size=4, num_channels=3, layer_norm_eps=1e-5, hidden_act="gelu")
    config = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=32)
    torch.manual_seed(seed)
    return CLIPModel(config).eval()


def tiny_clip(folder: str | Path, seed: int = 0) -> ClipScorer:
    """Save a tiny random CLIPModel and its tokenizer into `folder` and load them back as a ClipScorer."""
    folder = Path(folder)
    tokenizer = write_char_tokenizer(folder)
    tiny_clip_model(tokenizer, seed).save_pretrained(folder)
    return ClipScorer.from_pretrained(folder)
