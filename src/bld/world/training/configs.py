"""Model configurations of the bundled SD-format model of the synthetic world.

Sizes follow the throughput measured on the 2-core CPU (shared/BUNDLED-MODEL-NOTES.md):
VAE channels (16, 32, 64), one layer per block, 4 latent channels, factor 4 (64 px -> 16x16x4, 0.68M
parameters); UNet channels (32, 64, 64), cross-attention 64 (about 1.5M); CLIP text hidden 64, 3 layers,
word-level vocabulary; a small vision tower so the CLIPModel can rank results. The scheduler is SD's:
scaled_linear betas 0.00085-0.012 over 1000 steps, epsilon prediction.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

IMAGE_SIZE = 64

# Edit settings measured best for this world's models (README, "The bundled model"), written beside every
# exported pipeline as bld.model_defaults.EDIT_DEFAULTS_FILE. In this world a noised source at the paper's
# skip 0.25 holds enough of the old region to steer the mask back to it, so edits start from pure noise;
# fresh background noise, a higher guidance scale and 100 steps put the prompted object in the mask more
# often; latent cells the mask only touches stay the source's, so the object is not cut by the mask's
# edge; a background weight of 10 instead of 100 keeps the small decoder's fine-tune from blurring it.
WORLD_EDIT_DEFAULTS = {"num_inference_steps": 100, "skip_fraction": 0.0, "background_noise": "fresh",
                       "guidance_scale": 15.0, "latent_mask_mode": "inside", "reconstruction_background_weight": 10.0}


@dataclass
class VAEConfig:
    block_out_channels: tuple[int, ...] = (16, 32, 64)  # 3 blocks: 2 downsamplings, factor 4
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 8
    sample_size: int = IMAGE_SIZE

    def diffusers_kwargs(self) -> dict:
        n = len(self.block_out_channels)
        return dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * n,
                    up_block_types=["UpDecoderBlock2D"] * n, block_out_channels=list(self.block_out_channels),
                    layers_per_block=self.layers_per_block, latent_channels=self.latent_channels,
                    norm_num_groups=self.norm_num_groups, sample_size=self.sample_size)

    @property
    def factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


@dataclass
class UNetConfig:
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    cross_attention_dim: int = 64
    attention_head_dim: int = 8
    norm_num_groups: int = 8
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
    up_block_types: tuple[str, ...] = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")

    def diffusers_kwargs(self, latent_size: int, latent_channels: int = 4) -> dict:
        return dict(sample_size=latent_size, in_channels=latent_channels, out_channels=latent_channels,
                    block_out_channels=list(self.block_out_channels), layers_per_block=self.layers_per_block,
                    down_block_types=list(self.down_block_types), up_block_types=list(self.up_block_types),
                    cross_attention_dim=self.cross_attention_dim, attention_head_dim=self.attention_head_dim,
                    norm_num_groups=self.norm_num_groups)


@dataclass
class CLIPConfig:
    text_hidden: int = 64
    text_layers: int = 3
    text_heads: int = 4
    text_intermediate: int = 128
    vision_hidden: int = 64
    vision_layers: int = 3
    vision_heads: int = 4
    vision_intermediate: int = 128
    image_size: int = IMAGE_SIZE
    patch_size: int = 8
    projection_dim: int = 64

    def text_kwargs(self, special: dict, max_length: int) -> dict:
        """CLIPTextConfig kwargs; `special`: bos/eos/pad ids and vocab_size (bld.world.training.tokenizer.special_ids)."""
        return dict(vocab_size=special["vocab_size"], hidden_size=self.text_hidden,
                    intermediate_size=self.text_intermediate, num_hidden_layers=self.text_layers,
                    num_attention_heads=self.text_heads, max_position_embeddings=max_length,
                    projection_dim=self.projection_dim, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                    bos_token_id=special["bos_token_id"], eos_token_id=special["eos_token_id"],
                    pad_token_id=special["pad_token_id"])

    def vision_kwargs(self) -> dict:
        return dict(hidden_size=self.vision_hidden, intermediate_size=self.vision_intermediate,
                    num_hidden_layers=self.vision_layers, num_attention_heads=self.vision_heads,
                    image_size=self.image_size, patch_size=self.patch_size, projection_dim=self.projection_dim,
                    hidden_act="quick_gelu", layer_norm_eps=1e-5)


SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                        prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False, steps_offset=1)


@dataclass
class ModelConfigs:
    vae: VAEConfig = field(default_factory=VAEConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    clip: CLIPConfig = field(default_factory=CLIPConfig)

    def to_dict(self) -> dict:
        return asdict(self)


def build_vae(cfg: VAEConfig | None = None):
    from diffusers import AutoencoderKL

    return AutoencoderKL(**(cfg or VAEConfig()).diffusers_kwargs())


def build_unet(cfg: UNetConfig | None = None, latent_size: int = 16, latent_channels: int = 4):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**(cfg or UNetConfig()).diffusers_kwargs(latent_size, latent_channels))


def build_clip(tokenizer, cfg: CLIPConfig | None = None):
    """A full transformers CLIPModel whose text tower matches `tokenizer` (ids, vocabulary, max length)."""
    from transformers import CLIPConfig as HFCLIPConfig
    from transformers import CLIPModel

    from .tokenizer import special_ids

    cfg = cfg or CLIPConfig()
    config = HFCLIPConfig(text_config=cfg.text_kwargs(special_ids(tokenizer), tokenizer.model_max_length),
                          vision_config=cfg.vision_kwargs(), projection_dim=cfg.projection_dim)
    return CLIPModel(config)


def build_scheduler(kind: str = "ddpm"):
    from diffusers import DDIMScheduler, DDPMScheduler

    return (DDPMScheduler if kind == "ddpm" else DDIMScheduler).from_config(SCHEDULER_CONFIG)  # ignores keys a class lacks
