"""Precision handling: a float16 VAE that asks for upcasting runs in float32 and is put back; CUDA float16."""

import pytest
import torch
from conftest import gen, make_image, make_mask

from bld import BlendedLatentDiffusionPipeline
from bld.ops.blending import latent_mask
from bld.testing.tiny_models import tiny_sd_components


def test_float16_vae_with_force_upcast_runs_in_float32_and_is_restored(tmp_path):
    pipe = BlendedLatentDiffusionPipeline(**tiny_sd_components(tokenizer_dir=tmp_path))
    pipe.vae.register_to_config(force_upcast=True)
    reference = pipe.encode_source(pipe.prepare_image_and_mask(make_image(), make_mask(), None, None, False).image)
    pipe.vae.to(torch.float16)
    seen = []
    handle = pipe.vae.encoder.register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))
    z0 = pipe.encode_source(pipe.prepare_image_and_mask(make_image(), make_mask(), None, None, False).image)
    handle.remove()
    assert seen == [torch.float32]
    assert pipe.vae.dtype == torch.float16
    torch.testing.assert_close(z0.float(), reference, atol=5e-2, rtol=0)  # weights rounded to float16 once


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_float16_edit_on_cuda_keeps_the_source_outside_the_mask(tmp_path):
    pipe = BlendedLatentDiffusionPipeline(**tiny_sd_components(tokenizer_dir=tmp_path)).to("cuda", torch.float16)
    image, mask = make_image(), make_mask()
    latents = pipe("a red star", image, mask, num_inference_steps=4, num_images_per_prompt=2,
                   generator=[gen(0), gen(1)], output_type="latent").images
    prepared = pipe.prepare_image_and_mask(image, mask, None, None, False)
    z0 = pipe.encode_source(prepared.image).to(latents.dtype)
    outside = (latent_mask(prepared.mask, tuple(z0.shape[-2:]), "any") == 0).to("cuda").expand_as(latents)
    assert latents.dtype == torch.float16 and torch.isfinite(latents).all()
    assert torch.equal(latents[outside], z0.expand_as(latents)[outside])
    images = pipe("a red star", image, mask, num_inference_steps=4, num_images_per_prompt=1,
                  generator=gen(0)).images
    assert images[0].size == image.size
