"""Load a blended pipeline for a model name, a local diffusers folder or a Hub id; choose device and dtype."""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path

import torch

from .hub import local_files_only
from .image_io import InputError
from .model_defaults import BUNDLED_MODEL_DIR, TINY_RANDOM, default_model  # noqa: F401 - re-exported
from .pipelines.flux import BlendedLatentDiffusionFluxPipeline
from .pipelines.latent_diffusion import BlendedLatentDiffusionLDMPipeline
from .pipelines.schedulers import make_scheduler
from .pipelines.stable_diffusion import BlendedLatentDiffusionPipeline
from .pipelines.stable_diffusion_3 import BlendedLatentDiffusionSD3Pipeline
from .pipelines.stable_diffusion_xl import BlendedLatentDiffusionXLPipeline

Pipeline = (BlendedLatentDiffusionPipeline | BlendedLatentDiffusionXLPipeline | BlendedLatentDiffusionLDMPipeline
            | BlendedLatentDiffusionSD3Pipeline | BlendedLatentDiffusionFluxPipeline)


def load_scorer(clip_model: str | None, model: str, device: torch.device):
    """The CLIP scorer for ranking: `clip_model` if given, else the bundled model's CLIP, else a tiny random
    one for the tiny random model; None when there is none (results are then not ranked)."""
    from .ranking import ClipScorer

    if clip_model:
        return ClipScorer.from_pretrained(clip_model, device=device)
    bundled_clip = Path(model) / "clip"
    if (bundled_clip / "config.json").is_file():
        return ClipScorer.from_pretrained(bundled_clip, device=device)
    if model == TINY_RANDOM:
        from .testing.tiny_clip import tiny_clip

        return tiny_clip(tempfile.mkdtemp(prefix="bld-clip-"))
    return None


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda, then mps, then cpu; anything else is checked against what this machine has."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name!r} asked for but this PyTorch sees no CUDA GPU: use --device cpu")
    return device


def resolve_dtype(name: str, device: torch.device, flow: bool = False) -> torch.dtype:
    """'auto' -> float16 on CUDA (bfloat16 for the flow-matching families, SD3 and FLUX.1, whose activations
    overflow float16), float32 elsewhere."""
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if flow else torch.float16
    dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if name not in dtypes:
        raise InputError(f"unknown dtype {name!r}: use auto, {', '.join(dtypes)}")
    return dtypes[name]


def local_only_for(model: str) -> bool:
    """Whether `model` loads from this machine only: a local path, or a Hub id to take from the cache (the
    Hub check, with its network probe, runs once per load)."""
    return Path(model).exists() or local_files_only(model)


def pipeline_class_for(model: str, local_only: bool | None = None) -> type[Pipeline]:
    """The family's pipeline class, from the model's model_index.json (a local folder or the Hub)."""
    return pipeline_class_of(model_index(model, local_only))


def pipeline_class_of(index: dict) -> type[Pipeline]:
    """The family of a model_index.json: FLUX.1 or SD3 (a transformer, told apart by its class), LDM (an
    LDMBert text encoder), SDXL (a second text encoder) or SD."""
    name = str(index.get("_class_name", ""))
    transformer = str((index.get("transformer") or [None, ""])[1])
    if "Flux" in name or transformer.startswith("Flux"):
        return BlendedLatentDiffusionFluxPipeline
    if "StableDiffusion3" in name or transformer.startswith("SD3") or "text_encoder_3" in index:
        return BlendedLatentDiffusionSD3Pipeline
    if "transformer" in index:
        raise InputError(f"model {name or 'folder'} has a transformer of class {transformer or 'unknown'}: bld edits "
                         f"with SD 1.x/2.x, SDXL, SD3/3.5, FLUX.1 and LDM text-to-image models")
    if "bert" in index or "LDM" in name:
        return BlendedLatentDiffusionLDMPipeline
    is_xl = "text_encoder_2" in index or "XL" in name
    return BlendedLatentDiffusionXLPipeline if is_xl else BlendedLatentDiffusionPipeline


def model_index(model: str, local_only: bool | None = None) -> dict:
    """A model's model_index.json, from its folder or the Hub; one-line errors when there is none."""
    folder = Path(model)
    if folder.is_file():
        raise InputError(f"model {model!r} is a single file; bld loads diffusers folders: convert it with "
                         f"bld convert {model} FOLDER, then pass --model FOLDER")
    if folder.is_dir():
        index_file = folder / "model_index.json"
        if not index_file.is_file():
            raise InputError(f"model folder {model!r} has no model_index.json: it is not a diffusers model folder")
        index = json.loads(index_file.read_text())
    else:
        from diffusers import DiffusionPipeline

        local_only = local_only_for(model) if local_only is None else local_only
        try:
            index = DiffusionPipeline.load_config(model, local_files_only=local_only)
        except Exception as exc:  # offline, unknown id, gated repo: all mean "cannot get it"
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(f"cannot load model {model!r}: it is not a local folder and the Hugging Face Hub "
                             f"did not provide it (no network, an unknown id, or a gated model: "
                             f"{reason[:160]})") from None
    return index


def load_vae(model: str | None = None, *, device: str = "auto"):
    """Only the VAE of `model` (None: the default model), in float32 on `device`: what reconstructing results
    needs, without loading the UNet and text encoders."""
    from diffusers import AutoencoderKL

    model = model or default_model()
    torch_device = resolve_device(device)
    if model == TINY_RANDOM:
        from .testing.tiny_models import tiny_sd_components

        return tiny_sd_components(tokenizer_dir=tempfile.mkdtemp(prefix="bld-"))["vae"].to(torch_device)
    local_only = local_only_for(model)
    index = model_index(model, local_only)  # the same checks and messages as a whole pipeline's
    subfolder = "vqvae" if pipeline_class_of(index) is BlendedLatentDiffusionLDMPipeline else "vae"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            vae = AutoencoderKL.from_pretrained(model, subfolder=subfolder, torch_dtype=torch.float32,
                                                local_files_only=local_only)
        except (OSError, ValueError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(f"cannot load the VAE of model {model!r}: {reason[:200]}") from None
    return vae.eval().to(torch_device)


FLOW_FAMILIES = (BlendedLatentDiffusionSD3Pipeline, BlendedLatentDiffusionFluxPipeline)


def load_pipeline(model: str | None = None, *, device: str = "auto", dtype: str = "auto",
                  scheduler: str = "ddim", compile: bool = False, channels_last: bool = False,
                  cpu_offload: bool = False) -> Pipeline:
    """Load `model` (None: the default model) on `device` in `dtype` with the named scheduler; optionally
    with the GPU options of `speed_up`. cpu_offload: keep every model on the CPU and move each to the GPU
    only while it runs (diffusers' model CPU offload), for models larger than the GPU's memory."""
    model = model or default_model()
    torch_device = resolve_device(device)
    if cpu_offload and torch_device.type != "cuda":
        raise InputError("--cpu-offload moves each model to the GPU while it runs: it needs a CUDA device "
                         "(--device cuda)")
    if model == TINY_RANDOM:
        from .testing.tiny_models import tiny_sd_components

        torch_dtype = resolve_dtype(dtype, torch_device)
        pipe = BlendedLatentDiffusionPipeline(**tiny_sd_components(tokenizer_dir=tempfile.mkdtemp(prefix="bld-")))
    else:
        local_only = local_only_for(model)
        cls = pipeline_class_for(model, local_only)
        torch_dtype = resolve_dtype(dtype, torch_device, flow=issubclass(cls, FLOW_FAMILIES))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                pipe = cls.from_pretrained(model, torch_dtype=torch_dtype, local_files_only=local_only)
            except (OSError, ValueError) as exc:
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise InputError(f"cannot load model {model!r}: {reason[:200]}") from None
    pipe.scheduler = make_scheduler(scheduler, pipe.scheduler)
    if pipe.denoiser.dtype != torch_dtype:
        pipe = pipe.to(dtype=torch_dtype)
    if cpu_offload:
        pipe.enable_model_cpu_offload(device=torch_device)
    else:
        pipe = pipe.to(torch_device)
    return speed_up(pipe, compile=compile, channels_last=channels_last)


def speed_up(pipe: Pipeline, *, compile: bool = False, channels_last: bool = False) -> Pipeline:
    """GPU options that leave results as they are (up to float rounding): channels-last memory for the UNet
    and VAE, and torch.compile of the UNet (the transformer for SD3 and FLUX). A compiled network compiles
    once per latent shape it meets (the first edit at a new size takes its compile time), so it pays off
    for many edits at the same size."""
    name = "transformer" if isinstance(pipe, FLOW_FAMILIES) else "unet"
    if channels_last:
        pipe.denoiser.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if compile and not isinstance(pipe.denoiser, torch._dynamo.eval_frame.OptimizedModule):
        setattr(pipe, name, torch.compile(pipe.denoiser))
    return pipe


CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def checkpoint_is_xl(checkpoint: Path) -> bool:
    """Whether a single-file checkpoint is SDXL's (its second text encoder's keys), read from the file's
    header only (.safetensors; other formats count as SD 1.x/2.x unless told)."""
    if checkpoint.suffix.lower() != ".safetensors":
        return False
    from safetensors import safe_open

    with safe_open(str(checkpoint), framework="pt") as f:
        return any(key.startswith("conditioner.embedders.1.") for key in f.keys())


def convert_single_file(checkpoint: str | Path, output: str | Path, *, config: str | None = None,
                        xl: bool | None = None, overwrite: bool = False) -> Path:
    """A single-file checkpoint (A1111 / Civitai style) saved as a diffusers folder that bld (and diffusers)
    loads. diffusers' `from_single_file` converts the weights; the architecture's config comes from
    `config` (a diffusers folder or Hub id of the same family) or, with no config, from the Hub, which
    fails offline with a one-line InputError saying to pass one. The folder is written whole or not at all."""
    import shutil

    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    checkpoint, output = Path(checkpoint), Path(output)
    if not checkpoint.is_file():
        raise InputError(f"checkpoint {str(checkpoint)!r} not found")
    if checkpoint.suffix.lower() not in CHECKPOINT_SUFFIXES:
        raise InputError(f"checkpoint {str(checkpoint)!r} is not a single-file checkpoint "
                         f"({', '.join(CHECKPOINT_SUFFIXES)})")
    if output.exists() and not overwrite:
        raise InputError(f"output {str(output)!r} already exists: pass --overwrite to replace it")
    is_xl = checkpoint_is_xl(checkpoint) if xl is None else xl
    cls = StableDiffusionXLPipeline if is_xl else StableDiffusionPipeline
    if config is None:  # diffusers picks the family's config on the Hub (or its cache)
        from .hub import hub_reachable, offline_requested

        local_only = offline_requested() or not hub_reachable()
    else:
        local_only = local_only_for(config)
    try:
        pipe = cls.from_single_file(str(checkpoint), config=config, local_files_only=local_only)
    except Exception as exc:  # no config offline, a checkpoint of another family, a damaged file
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        hint = ("pass --config with a diffusers folder (or cached Hub id) of the same architecture"
                if config is None else f"is --config {config!r} of the same architecture?")
        raise InputError(f"cannot convert {checkpoint.name} as {'SDXL' if is_xl else 'SD 1.x/2.x'}: {hint} "
                         f"({reason})") from None
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}-", dir=output.parent))
    try:
        pipe.save_pretrained(staging, safe_serialization=True)
        if output.exists():
            shutil.rmtree(output)
        staging.rename(output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output
