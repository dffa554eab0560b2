"""Components built in code for tests and benchmarks (nothing is downloaded).

- `tiny_models`: tiny random SD / SDXL components and a character-level CLIP tokenizer; also behind the
  `tiny-random` model name (`bld.loading`).
- `tiny_clip`: a tiny random CLIPModel for ranking.
- `reference_architectures`: real-size SD 1.5 / 2.1 / SDXL with random weights, for shapes and timing.
- `photo_vae`: a small VAE trained in seconds on scikit-image's photos, for reconstruction tests.
"""
