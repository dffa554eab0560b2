"""The paper's own model family (LDM text-to-image: LDMBert, KL autoencoder), on tiny components built in code.

test_pipeline.py checks the method's guarantees on it with the other families (inverted mask, same seed,
batch equals single runs, guidance 1, output types); here: the background is the source latent exactly,
a perfect denoiser is followed, crops and soft masks, and loading it as a diffusers folder from the CLI.
"""

import json

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import gen, make_image, make_mask
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, VQModel
from test_oracle_schedulers import oracle

from bld import BlendedLatentDiffusionLDMPipeline
from bld.apps.cli import main
from bld.image_io import read_png_metadata
from bld.loading import load_pipeline, load_vae, pipeline_class_for
from bld.ops.blending import latent_mask
from bld.testing.tiny_ldm import tiny_ldm_components


def source_and_mask(pipe, image, mask):
    prepared = pipe.prepare_image_and_mask(image, mask, None, None, False)
    z0 = pipe.encode_source(prepared.image)
    return z0, latent_mask(prepared.mask, tuple(z0.shape[-2:]), "any")


def test_the_paper_configuration_is_the_default(ldm_pipe):
    assert ldm_pipe.default_guidance_scale == 5.0 and isinstance(ldm_pipe.scheduler, DDIMScheduler)
    assert ldm_pipe.native_size == ldm_pipe.unet.config.sample_size * ldm_pipe.vae_scale_factor


@pytest.mark.parametrize("background_noise", ["fixed", "fresh"])
def test_outside_the_mask_the_final_latent_is_the_source_latent(ldm_pipe, background_noise):
    image, mask = make_image(), make_mask()
    latents = ldm_pipe("a red star", image, mask, num_inference_steps=4, num_images_per_prompt=2, generator=gen(0),
                       background_noise=background_noise, negative_prompt="blurry", output_type="latent").images
    z0, m = source_and_mask(ldm_pipe, image, mask)
    outside = (m == 0).expand_as(latents)
    assert torch.equal(latents[outside], z0.expand_as(latents)[outside])
    assert not torch.allclose(latents[~outside], z0.expand_as(latents)[~outside], atol=1e-3)


@pytest.mark.parametrize("cls, extra", [(DDIMScheduler, {"set_alpha_to_one": True}), (EulerDiscreteScheduler, {}),
                                        (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"})])
@pytest.mark.parametrize("skip_fraction", [0.0, 0.5])
def test_a_perfect_denoiser_lands_on_its_latent_inside_the_mask(ldm_pipe, monkeypatch, cls, extra, skip_fraction):
    image, mask = make_image(), make_mask()
    original = ldm_pipe.scheduler
    ldm_pipe.scheduler = cls.from_config(original.config, **extra)
    z0, m = source_and_mask(ldm_pipe, image, mask)
    target = torch.randn(z0.shape, generator=torch.Generator().manual_seed(7)) * 0.8
    monkeypatch.setattr(ldm_pipe.unet, "forward", oracle(ldm_pipe, target))
    try:
        latents = ldm_pipe("a red star", image, mask, num_inference_steps=10, skip_fraction=skip_fraction,
                           guidance_scale=1.0, num_images_per_prompt=2, generator=gen(3), output_type="latent").images
    finally:
        ldm_pipe.scheduler = original
    inside = m.expand_as(latents).bool()
    assert (latents - target.expand_as(latents))[inside].abs().max() < 1e-3
    assert torch.equal(latents[~inside], z0.expand_as(latents)[~inside])


def test_a_large_image_is_edited_in_a_crop_and_a_soft_mask_keeps_black_exact(ldm_pipe):
    image = make_image((200, 120))
    mask = np.zeros((120, 200), np.uint8)
    mask[40:70, 20:50] = 255
    mask[70:80, 20:50] = 128  # half strength
    out = ldm_pipe("a red star", image, PIL.Image.fromarray(mask), num_inference_steps=4, generator=gen(0),
                   soft_mask=True)
    result, source = np.asarray(out.images[0]), np.asarray(image)
    assert out.images[0].size == (200, 120) and len(out.crops) == 1 and out.crops[0]["box"] != [0, 0, 200, 120]
    assert np.array_equal(result[mask == 0], source[mask == 0])
    assert not np.array_equal(result[40:70, 20:50], source[40:70, 20:50])


def test_only_the_kl_autoencoder_can_blend():
    parts = tiny_ldm_components()
    parts["vqvae"] = VQModel(block_out_channels=[32, 64], down_block_types=["DownEncoderBlock2D"] * 2,
                             up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, norm_num_groups=32)
    with pytest.raises(ValueError, match="needs the KL autoencoder"):
        BlendedLatentDiffusionLDMPipeline(**parts)


def test_a_saved_ldm_folder_loads_as_its_family_and_edits_from_the_cli(ldm_pipe, tmp_path, capsys):
    folder = tmp_path / "ldm"
    ldm_pipe.save_pretrained(folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["_class_name"] = "LDMTextToImagePipeline"  # as the CompVis folder says
    (folder / "model_index.json").write_text(json.dumps(index))
    assert pipeline_class_for(str(folder)) is BlendedLatentDiffusionLDMPipeline
    loaded = load_pipeline(str(folder), device="cpu")
    assert isinstance(loaded, BlendedLatentDiffusionLDMPipeline) and isinstance(loaded.scheduler, DDIMScheduler)
    assert torch.equal(load_vae(str(folder), device="cpu").encoder.conv_in.weight, ldm_pipe.vae.encoder.conv_in.weight)
    make_image().save(tmp_path / "image.png")
    make_mask().save(tmp_path / "mask.png")
    code = main(["edit", str(tmp_path / "image.png"), str(tmp_path / "mask.png"), "a red star", "-o",
                 str(tmp_path / "o.png"), "--model", str(folder), "--steps", "3", "--num-results", "1", "--seed", "2",
                 "--json"])
    assert code == 0, capsys.readouterr().err
    record = json.loads(read_png_metadata(tmp_path / "o.png")["bld"])
    assert record["model"] == "ldm" and record["params"]["guidance_scale"] == 5.0
