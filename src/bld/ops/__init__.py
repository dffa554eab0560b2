"""The method's math on tensors and arrays: latent masks and blending, background reconstruction, image metrics.

Pure functions (and the small modules they optimize); nothing here loads a model, reads a file or knows a
pipeline, and nothing here imports another part of bld.
"""
