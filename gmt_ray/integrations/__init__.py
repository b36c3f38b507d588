"""GMT inside other people's training loops.

``gmt_ray.integrations.transformers.GradientMaskCallback``: a plain Hugging Face
``transformers.Trainer`` with the mask (import the submodule; nothing is imported here).
"""
