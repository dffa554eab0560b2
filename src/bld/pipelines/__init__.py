"""diffusers-style pipelines, one module per model family, over the shared blended loop in `blended`.

- `blended`: the Blended Latent Diffusion loop (`BlendedLatentMixin`) and its output type.
- `stable_diffusion`: SD 1.x / 2.x (`BlendedLatentDiffusionPipeline`).
- `stable_diffusion_xl`: SDXL (`BlendedLatentDiffusionXLPipeline`).
- `latent_diffusion`: the paper's own LDM text-to-image family (`BlendedLatentDiffusionLDMPipeline`).
- `flow_matching`: the loop's hooks for flow-matching models; `stable_diffusion_3`: SD3 / SD3.5
  (`BlendedLatentDiffusionSD3Pipeline`); `flux`: FLUX.1 (`BlendedLatentDiffusionFluxPipeline`).
- `schedulers`: the schedulers an edit may name.
"""

from .blended import BlendedLatentDiffusionPipelineOutput
from .flux import BlendedLatentDiffusionFluxPipeline
from .latent_diffusion import BlendedLatentDiffusionLDMPipeline
from .stable_diffusion import BlendedLatentDiffusionPipeline
from .stable_diffusion_3 import BlendedLatentDiffusionSD3Pipeline
from .stable_diffusion_xl import BlendedLatentDiffusionXLPipeline

__all__ = ["BlendedLatentDiffusionFluxPipeline", "BlendedLatentDiffusionLDMPipeline", "BlendedLatentDiffusionPipeline",
           "BlendedLatentDiffusionPipelineOutput", "BlendedLatentDiffusionSD3Pipeline",
           "BlendedLatentDiffusionXLPipeline"]
