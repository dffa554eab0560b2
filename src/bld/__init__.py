"""bld: text-driven local image editing with Blended Latent Diffusion."""

from .params import EditParams
from .pipeline import BlendedLatentDiffusionPipeline
from .pipeline_xl import BlendedLatentDiffusionXLPipeline
from .sampling import BlendedLatentDiffusionPipelineOutput

__version__ = "0.1.0"
__all__ = ["BlendedLatentDiffusionPipeline", "BlendedLatentDiffusionXLPipeline",
           "BlendedLatentDiffusionPipelineOutput", "EditParams", "__version__"]
