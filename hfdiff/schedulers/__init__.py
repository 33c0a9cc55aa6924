"""Sprite schedulers: diffusers' DDPM and DDIM with the sprite course's defaults, their steps written as the papers."""

from .scheduling_sprite_ddim import SpriteDDIMScheduler
from .scheduling_sprite_ddpm import SpriteDDPMScheduler

__all__ = ["SpriteDDPMScheduler", "SpriteDDIMScheduler"]
