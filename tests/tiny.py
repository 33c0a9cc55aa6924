"""Tiny random-weight models and pipelines shared by the tests (fast on a CPU, no download)."""

import json

import torch

from hfdiff import ContextUNet2DModel, SpriteDDPMScheduler, SpriteDiffusionPipeline
from hfdiff.data import SPRITE_CLASSES

TINY_UNET = {
    "block_out_channels": (8, 16),
    "down_block_types": ("DownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "UpBlock2D"),
    "norm_num_groups": 4,
    "layers_per_block": 1,
}
TINY_UNET_JSON = json.dumps(TINY_UNET)  # the same, as training's --model_config_overrides takes it
T = 20  # training steps of the test scheduler: keeps full DDPM loops fast


def tiny_unet(init_seed: int = 0, **overrides) -> ContextUNet2DModel:
    """A tiny model whose conditioning MLPs are moved off their identity initialisation (which would hide bugs)."""
    torch.manual_seed(init_seed)
    unet = ContextUNet2DModel(**{**TINY_UNET, **overrides})
    with torch.no_grad():
        mlps = list(unet.time_mlps) + (list(unet.context_mlps) if unet.context_mlps is not None else [])
        for mlp in mlps:
            mlp[2].weight.normal_(std=0.5)
    return unet.eval()


def make_pipe(
    context_dim=5, class_names=tuple(SPRITE_CLASSES), scheduler=None, init_seed=0
) -> SpriteDiffusionPipeline:
    names = list(class_names) if context_dim is not None and class_names is not None else None
    unet = tiny_unet(init_seed, context_dim=context_dim, class_names=names)
    pipe = SpriteDiffusionPipeline(unet=unet, scheduler=scheduler or SpriteDDPMScheduler(num_train_timesteps=T))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def seed(value: int) -> torch.Generator:
    """A generator of its own (torch.manual_seed would re-seed and return the one global generator)."""
    return torch.Generator().manual_seed(value)
