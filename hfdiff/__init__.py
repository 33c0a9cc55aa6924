"""hfdiff: small diffusion models (sprites and beyond) trained, sampled and shared on Hugging Face's stack."""

from .data import SPRITE_CLASSES
from .models import ContextUNet2DModel
from .pipelines import SpriteDiffusionPipeline
from .schedulers import SpriteDDIMScheduler, SpriteDDPMScheduler

__version__ = "0.1.0"

__all__ = [
    "SPRITE_CLASSES",
    "ContextUNet2DModel",
    "SpriteDDIMScheduler",
    "SpriteDDPMScheduler",
    "SpriteDiffusionPipeline",
]
