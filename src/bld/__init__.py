"""bld: text-driven local image editing with Blended Latent Diffusion.

The pipelines load lazily, so `import bld` and the CLI's --help stay fast.
"""

from .params import EditParams, Region

__version__ = "0.1.0"
__all__ = ["BlendedLatentDiffusionPipeline", "BlendedLatentDiffusionXLPipeline", "BlendedLatentDiffusionLDMPipeline",
           "BlendedLatentDiffusionSD3Pipeline", "BlendedLatentDiffusionFluxPipeline",
           "BlendedLatentDiffusionPipelineOutput", "EditParams", "Region", "__version__"]

_LAZY = {
    "BlendedLatentDiffusionPipeline": ".pipelines.stable_diffusion",
    "BlendedLatentDiffusionXLPipeline": ".pipelines.stable_diffusion_xl",
    "BlendedLatentDiffusionLDMPipeline": ".pipelines.latent_diffusion",
    "BlendedLatentDiffusionSD3Pipeline": ".pipelines.stable_diffusion_3",
    "BlendedLatentDiffusionFluxPipeline": ".pipelines.flux",
    "BlendedLatentDiffusionPipelineOutput": ".pipelines.blended",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'bld' has no attribute {name!r}")
