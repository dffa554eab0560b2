"""Shared fixtures: tiny pipelines built in code, a test image and masks."""

import socket

import numpy as np
import PIL.Image
import pytest
import torch

from bld import (
    BlendedLatentDiffusionFluxPipeline,
    BlendedLatentDiffusionLDMPipeline,
    BlendedLatentDiffusionPipeline,
    BlendedLatentDiffusionSD3Pipeline,
    BlendedLatentDiffusionXLPipeline,
)
from bld.testing.tiny_flow_models import tiny_flux_components, tiny_sd3_components
from bld.testing.tiny_ldm import tiny_ldm_components
from bld.testing.tiny_models import tiny_sd_components, tiny_sdxl_components

SIZE = 64


def tiny_pipe(cls, components, tmp_path_factory, folder: str):
    """A pipeline of `cls` on tiny components (their tokenizer files in a fresh temp folder), no progress bars."""
    pipe = cls(**components(tokenizer_dir=tmp_path_factory.mktemp(folder)))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def sd_pipe(tmp_path_factory):
    return tiny_pipe(BlendedLatentDiffusionPipeline, tiny_sd_components, tmp_path_factory, "tok")


@pytest.fixture(scope="session")
def sdxl_pipe(tmp_path_factory):
    return tiny_pipe(BlendedLatentDiffusionXLPipeline, tiny_sdxl_components, tmp_path_factory, "tokxl")


@pytest.fixture(scope="session")
def ldm_pipe(tmp_path_factory):
    return tiny_pipe(BlendedLatentDiffusionLDMPipeline, tiny_ldm_components, tmp_path_factory, "bert")


@pytest.fixture(scope="session")
def sd3_pipe(tmp_path_factory):
    return tiny_pipe(BlendedLatentDiffusionSD3Pipeline, tiny_sd3_components, tmp_path_factory, "toksd3")


@pytest.fixture(scope="session")
def flux_pipe(tmp_path_factory):
    return tiny_pipe(BlendedLatentDiffusionFluxPipeline, tiny_flux_components, tmp_path_factory, "tokflux")


@pytest.fixture(params=["sd", "sdxl"])
def pipe(request, sd_pipe, sdxl_pipe):
    return sd_pipe if request.param == "sd" else sdxl_pipe


@pytest.fixture(params=["sd", "sdxl", "ldm", "sd3", "flux"])
def any_family(request, sd_pipe, sdxl_pipe, ldm_pipe, sd3_pipe, flux_pipe):
    """Each model family's tiny pipeline, for what the method guarantees on every family."""
    return {"sd": sd_pipe, "sdxl": sdxl_pipe, "ldm": ldm_pipe, "sd3": sd3_pipe, "flux": flux_pipe}[request.param]


def make_image(size=(SIZE, SIZE), seed=0) -> PIL.Image.Image:
    """A smooth colorful image (gradients plus a square), width x height = size."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    rgb = np.stack([x, y, 0.5 + 0.5 * np.sin(6 * x + seed)], axis=-1)
    rgb[h // 4: h // 2, w // 4: w // 2] = [0.9, 0.1, 0.1]
    return PIL.Image.fromarray((rgb * 255).astype(np.uint8))


def make_mask(size=(SIZE, SIZE), box=(16, 16, 40, 48)) -> PIL.Image.Image:
    """White box (left, top, right, bottom) on black."""
    m = np.zeros((size[1], size[0]), np.uint8)
    left, top, right, bottom = box
    m[top:bottom, left:right] = 255
    return PIL.Image.fromarray(m)


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def image():
    return make_image()


@pytest.fixture
def mask():
    return make_mask()


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a test module: on a shared CPU more threads than free cores make every op spin."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def free_port() -> int:
    """A local TCP port nothing listens on now, for a test server."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
