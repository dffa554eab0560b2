"""diffusers-style pipelines, one module per model family, over the shared blended loop in `blended`.

- `blended`: the Blended Latent Diffusion loop (`BlendedLatentMixin`) and its output type.
- `stable_diffusion`: SD 1.x / 2.x (`BlendedLatentDiffusionPipeline`).
- `stable_diffusion_xl`: SDXL (`BlendedLatentDiffusionXLPipeline`).
- `latent_diffusion`: the paper's own LDM text-to-image family (`BlendedLatentDiffusionLDMPipeline`).
- `schedulers`: the schedulers an edit may name.
"""

from .blended import BlendedLatentDiffusionPipelineOutput
from .latent_diffusion import BlendedLatentDiffusionLDMPipeline
from .stable_diffusion import BlendedLatentDiffusionPipeline
from .stable_diffusion_xl import BlendedLatentDiffusionXLPipeline

__all__ = ["BlendedLatentDiffusionLDMPipeline", "BlendedLatentDiffusionPipeline",
           "BlendedLatentDiffusionPipelineOutput", "BlendedLatentDiffusionXLPipeline"]
