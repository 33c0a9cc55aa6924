"""Model samples -> pictures: the one conversion of hfdiff's samples ([-1, 1] tensors) to PIL images, numpy arrays or
[0, 1] tensors, and the nearest-neighbour upscaling that shows 16x16 sprites with crisp pixels.

Imports only torch and diffusers, so it travels next to a saved pipeline as stand-alone code (the pipeline module
imports it relatively, and diffusers' remote-code loader copies it along).
"""

from __future__ import annotations

import torch
from diffusers.image_processor import VaeImageProcessor

OUTPUT_TYPES = ("pil", "np", "pt")
# [-1, 1] -> [0, 1] and on to numpy / PIL, as diffusers' pipelines do it. The one conversion of model samples to
# pictures in hfdiff: the pipeline, the trajectory recorder, the CLI's and visualize's grids all call
# `postprocess_sample`. No resizing: sprites are shown at their own size (grids upscale them explicitly).
_IMAGE_PROCESSOR = VaeImageProcessor(do_resize=False, do_normalize=True)


def postprocess_sample(sample: torch.Tensor, output_type: str = "pil"):
    """sample: (B, C, H, W) in about [-1, 1] -> images in [0, 1] as "pt" (B, C, H, W) float tensor, "np"
    (B, H, W, C) float32 array, or "pil" (list of PIL images; 1-channel samples give grayscale images)."""
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}.")
    return _IMAGE_PROCESSOR.postprocess(sample.detach(), output_type=output_type)


def upscale_images(images, scale: int) -> list:
    """Nearest-neighbour upscaling (crisp pixels) of PIL images by an integer factor: how hfdiff shows 16x16 sprites
    (the trajectory recorder's frames; grids in hfdiff.visualize, the demo and training)."""
    if scale == 1:
        return list(images)
    return [image.resize((image.width * scale, image.height * scale), resample=0) for image in images]  # 0: NEAREST
