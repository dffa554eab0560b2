"""The bundled model: a standard diffusers folder in the package, loaded by default, that edits its world."""

from pathlib import Path

import numpy as np
import pytest
import torch

from bld.editing import run_edit
from bld.loading import BUNDLED_MODEL_DIR, default_model, load_pipeline, load_scorer
from bld.model_defaults import model_edit_defaults
from bld.params import EditParams
from bld.world import scenes as world
from bld.world.demo import DEMO_BOX, DEMO_PROMPT, demo_scene
from bld.world.judge import load_judge
from bld.world.training.configs import WORLD_EDIT_DEFAULTS

MAX_BYTES = 40 * 2**20


def test_bundled_model_is_the_default_and_small():
    assert default_model() == str(BUNDLED_MODEL_DIR)
    files = [p for p in BUNDLED_MODEL_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= MAX_BYTES
    weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".pt", ".ckpt", ".pth")]
    assert weights and all(p.suffix == ".safetensors" for p in weights)
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "clip"):
        assert (BUNDLED_MODEL_DIR / part).is_dir(), part


def test_it_recommends_the_edit_settings_measured_for_its_world():
    assert model_edit_defaults(None) == WORLD_EDIT_DEFAULTS


def test_diffusers_own_pipeline_loads_it_unchanged():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(BUNDLED_MODEL_DIR, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a red star on a blue background", num_inference_steps=10, height=64, width=64,
                 generator=torch.Generator().manual_seed(0), output_type="np").images[0]
    assert image.shape == (64, 64, 3) and image.std() > 0.05


@pytest.fixture(scope="module")
def bundled():
    pipe = load_pipeline(device="cpu", dtype="float32")
    pipe.set_progress_bar_config(disable=True)
    return pipe, load_scorer(None, default_model(), torch.device("cpu"))


def test_its_clip_prefers_the_right_caption(bundled):
    _, scorer = bundled
    scenes = [world.sample_scene(np.random.default_rng([91, i]), max_objects=1) for i in range(16)]
    right = wrong = 0
    for k, scene in enumerate(scenes):
        other = scenes[(k + 1) % len(scenes)].objects[0]
        if other.caption() == scene.objects[0].caption():
            continue
        s = scorer.score([world.render(scene)], scene.objects[0].caption(), None)[0]
        t = scorer.score([world.render(scene)], other.caption(), None)[0]
        right, wrong = right + (s > t), wrong + (s <= t)
    assert right >= 3 * wrong, (right, wrong)


def test_demo_edit_puts_the_prompted_object_in_the_mask(bundled):
    """The CLIP-ranked best of the demo's 4 results is a red star, with the model's recommended edit settings
    (README: text-to-image color 98%, shape 91%, stars the weakest at 73%; edits on 440 tasks correct in 80.9%
    of results and 93.9% of CLIP-ranked best of 4)."""
    pipe, scorer = bundled
    image, mask = demo_scene()
    params = EditParams.from_dict({**model_edit_defaults(None), "prompt": DEMO_PROMPT, "num_inference_steps": 20,
                                   "num_images": 4, "seed": 0})  # as `bld demo` runs it
    results = run_edit(pipe, image, mask, params, scorer)
    verdict = load_judge().classify_region(results[0].image, box=DEMO_BOX)  # the CLIP-ranked best
    assert (verdict["shape"], verdict["color"]) == ("star", "red"), verdict
    outside = np.asarray(mask) == 0
    assert np.array_equal(np.asarray(results[0].image)[outside], np.asarray(image)[outside])
