"""ContextUNet2DModel: diffusers' UNet2DModel with the sprite course's decoder conditioning.

Before every up block the decoder features are modulated by the context and shifted by the time:

    h <- C_i(c) * h + T_i(t)

C_i and T_i are small MLPs (Linear-GELU-Linear) from the context vector c and from the time embedding to the
channel count entering up block i. Everything else (blocks, config, save/load, gradient checkpointing) is
UNet2DModel's own.

This module imports only torch and diffusers, so it can be exported next to a saved pipeline as stand-alone code.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.models.unets.unet_2d import UNet2DModel, UNet2DOutput
from torch import nn

# Named architectures. "sprite-small" is the course scale (1.4M parameters, no attention);
# "sprite-base" is wider and deeper, with self-attention at the lowest resolution (6.7M parameters).
UNET_PRESETS: dict[str, dict] = {
    "sprite-small": {
        "sample_size": 16,
        "block_out_channels": (32, 64, 80),
        "down_block_types": ("DownBlock2D", "DownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "UpBlock2D", "UpBlock2D"),
        "layers_per_block": 1,
        "add_attention": False,
        "norm_num_groups": 8,
        "context_dim": 5,
    },
    "sprite-base": {
        "sample_size": 16,
        "block_out_channels": (64, 128, 128),
        "down_block_types": ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        "up_block_types": ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        "layers_per_block": 2,
        "add_attention": True,
        "attention_head_dim": 32,
        "norm_num_groups": 32,
        "context_dim": 5,
    },
}


class EmbedMLP(nn.Sequential):
    """Linear-GELU-Linear from an embedding to a channel count: (B, in_dim) -> (B, out_dim, 1, 1)."""

    def __init__(self, in_dim: int, out_dim: int, init_bias: float = 0.0):
        super().__init__(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))
        # Start as the identity map of the decoder (C_i = 1, T_i = 0): an untrained model then behaves like a
        # plain UNet2DModel at first and learns how much to let context and time in, instead of starting with every
        # decoder feature scaled by a random factor.
        nn.init.zeros_(self[2].weight)
        nn.init.constant_(self[2].bias, init_bias)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return super().forward(embedding)[:, :, None, None]


class ContextUNet2DModel(UNet2DModel):
    r"""
    A UNet2DModel whose decoder takes a context vector, multiplied in, and the time embedding, added, before every up
    block: h <- C_i(c) * h + T_i(t).

    Every UNet2DModel argument keeps its meaning; the two additions:

    Args:
        context_dim (`int`, *optional*):
            Length of the context vector: 5 for one-hot sprite classes, larger for text embeddings. `None` builds an
            unconditional model (only the T_i time shifts are added).
        class_names (`list[str]`, *optional*):
            Names of the context entries, in order, when the context is a one-hot class vector (used by the pipeline
            to turn "hero" into a context). Must have `context_dim` entries.
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int | tuple[int, int] | None = 16,  # height (and width) of the images; informational
        in_channels: int = 3,  # channels of the images (3 RGB, 1 grayscale)
        out_channels: int = 3,  # channels predicted (equals in_channels for epsilon/sample/v targets)
        center_input_sample: bool = False,  # map inputs from [0, 1] to [-1, 1] inside the model
        time_embedding_type: str = "positional",  # "positional" (sinusoidal), "fourier" or "learned"
        time_embedding_dim: int | None = None,  # width of the time embedding; None = 4 * block_out_channels[0]
        freq_shift: int = 0,  # shift of the sinusoidal frequencies
        flip_sin_to_cos: bool = True,  # order of the sin/cos halves of the timestep embedding
        down_block_types: tuple[str, ...] = ("DownBlock2D", "DownBlock2D", "DownBlock2D"),  # one per resolution
        mid_block_type: str | None = "UNetMidBlock2D",  # None drops the middle block
        up_block_types: tuple[str, ...] = ("UpBlock2D", "UpBlock2D", "UpBlock2D"),  # mirror of the down blocks
        block_out_channels: tuple[int, ...] = (32, 64, 80),  # channels per resolution, highest first
        layers_per_block: int = 1,  # resnets per down block (up blocks get one more)
        mid_block_scale_factor: float = 1,  # output scale of the middle block
        downsample_padding: int = 1,  # padding of the strided downsampling conv
        downsample_type: str = "conv",  # "conv" or "resnet"
        upsample_type: str = "conv",  # "conv" or "resnet"
        dropout: float = 0.0,  # dropout inside the resnets; 0 disables it
        act_fn: str = "silu",  # activation of the resnets
        attention_head_dim: int | None = 8,  # channels per attention head; None = one head per block
        norm_num_groups: int = 8,  # GroupNorm groups; must divide every block's channel count
        attn_norm_num_groups: int | None = None,  # GroupNorm groups inside the middle attention; None = default
        norm_eps: float = 1e-5,  # GroupNorm epsilon
        resnet_time_scale_shift: str = "default",  # "default" adds the time embedding, "scale_shift" FiLMs it
        add_attention: bool = False,  # self-attention in the middle block
        class_embed_type: str | None = None,  # UNet2DModel's own class conditioning (added to the time embedding)
        num_class_embeds: int | None = None,  # number of classes for that embedding; None disables it
        num_train_timesteps: int | None = None,  # needed only by time_embedding_type="learned"
        context_dim: int | None = 5,  # length of the context vector c; None = unconditional decoder
        class_names: list[str] | None = None,  # names of the one-hot context entries, in order; None = unnamed
    ):
        if context_dim is not None and context_dim < 1:
            raise ValueError(f"context_dim must be a positive integer or None, got {context_dim}.")
        if class_names is not None and len(class_names) != context_dim:
            raise ValueError(
                f"class_names has {len(class_names)} entries but context_dim is {context_dim}; give one name per "
                "context entry, or leave class_names=None."
            )
        super().__init__(
            sample_size=sample_size,
            in_channels=in_channels,
            out_channels=out_channels,
            center_input_sample=center_input_sample,
            time_embedding_type=time_embedding_type,
            time_embedding_dim=time_embedding_dim,
            freq_shift=freq_shift,
            flip_sin_to_cos=flip_sin_to_cos,
            down_block_types=down_block_types,
            mid_block_type=mid_block_type,
            up_block_types=up_block_types,
            block_out_channels=block_out_channels,
            layers_per_block=layers_per_block,
            mid_block_scale_factor=mid_block_scale_factor,
            downsample_padding=downsample_padding,
            downsample_type=downsample_type,
            upsample_type=upsample_type,
            dropout=dropout,
            act_fn=act_fn,
            attention_head_dim=attention_head_dim,
            norm_num_groups=norm_num_groups,
            attn_norm_num_groups=attn_norm_num_groups,
            norm_eps=norm_eps,
            resnet_time_scale_shift=resnet_time_scale_shift,
            add_attention=add_attention,
            class_embed_type=class_embed_type,
            num_class_embeds=num_class_embeds,
            num_train_timesteps=num_train_timesteps,
        )
        time_embed_dim = time_embedding_dim or block_out_channels[0] * 4
        # Channels entering up block i: the middle block's output for the first, the previous up block's after.
        reversed_channels = list(reversed(block_out_channels))
        up_in_channels = [reversed_channels[0]] + reversed_channels[:-1]
        self.time_mlps = nn.ModuleList(EmbedMLP(time_embed_dim, ch) for ch in up_in_channels)
        if context_dim is None:
            self.context_mlps = None
        else:
            self.context_mlps = nn.ModuleList(EmbedMLP(context_dim, ch, init_bias=1.0) for ch in up_in_channels)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "ContextUNet2DModel":
        """Build a named architecture ("sprite-small", "sprite-base"); keyword arguments override its config."""
        if name not in UNET_PRESETS:
            raise ValueError(f"Unknown preset {name!r}; choose one of {sorted(UNET_PRESETS)}.")
        return cls(**{**UNET_PRESETS[name], **overrides})

    def prepare_context(self, context: torch.Tensor | None, batch_size: int, device, dtype) -> torch.Tensor | None:
        """Check a context against the config and broadcast it: `None` (the null context) or (D,), (1, D), (B, D)
        -> (B, D). Returns None for an unconditional model."""
        context_dim = self.config.context_dim
        if context_dim is None:
            if context is not None:
                raise ValueError(
                    "This model is unconditional (context_dim=None) but a context was given; drop `context`, or "
                    "train a conditional model (e.g. with train_conditional.py)."
                )
            return None
        if context is None:
            # The null context: what context dropout trains the network to treat as "no condition".
            return torch.zeros(batch_size, context_dim, device=device, dtype=dtype)
        context = torch.as_tensor(context, device=device, dtype=dtype)
        if context.ndim == 1:
            context = context[None]
        if context.ndim != 2 or context.shape[-1] != context_dim:
            raise ValueError(
                f"context has shape {tuple(context.shape)} but this model takes context vectors of length "
                f"{context_dim}: pass a ({batch_size}, {context_dim}) tensor (or None for the null context)."
            )
        if context.shape[0] not in (1, batch_size):
            raise ValueError(
                f"context has {context.shape[0]} rows but the batch has {batch_size} images; pass one context row "
                "per image, or a single row for all of them."
            )
        return context.expand(batch_size, -1)

    def check_sample_shape(self, sample: torch.Tensor) -> None:
        """A (B, in_channels, H, W) batch whose H and W survive every downsampling, or a ValueError saying what fits
        (rather than a size mismatch from deep inside a convolution or a skip connection)."""
        channels = self.config.in_channels
        if sample.ndim != 4 or sample.shape[1] != channels:
            raise ValueError(
                f"sample has shape {tuple(sample.shape)} but this model takes (B, {channels}, H, W) images; "
                f"convert the images to {channels} channel(s), or build the model with in_channels={sample.shape[1]}."
            )
        halvings = len(self.config.block_out_channels) - 1  # each down block but the last halves H and W
        factor = 2**halvings
        height, width = sample.shape[-2:]
        if height % factor or width % factor:
            raise ValueError(
                f"sample is {height}x{width} but this model halves the image size {halvings} time(s), so H and W must "
                f"be multiples of {factor}; resize to e.g. "
                f"{max(factor, height // factor * factor)}x{max(factor, width // factor * factor)}."
            )

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        context: torch.Tensor | None = None,
        class_labels: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> UNet2DOutput | tuple:
        r"""
        Predict the denoising target from a noisy sample.

        Args:
            sample: (B, C, H, W) noisy images x_t, in [-1, 1] at t = 0.
            timestep: () or (B,) integer timesteps t (a Python number is broadcast to the batch).
            context: (B, context_dim), (1, context_dim) or (context_dim,) context vectors c; None is the null context.
            class_labels: (B,) labels for UNet2DModel's own class embedding (only with `num_class_embeds`).
            return_dict: return a `UNet2DOutput` rather than a tuple.

        Returns:
            `UNet2DOutput` whose `sample` is (B, out_channels, H, W).
        """
        self.check_sample_shape(sample)
        batch_size = sample.shape[0]
        context = self.prepare_context(context, batch_size, sample.device, sample.dtype)
        if self.config.center_input_sample:
            sample = 2 * sample - 1.0

        # 1. time embedding, shared by every resnet (added inside the blocks) and by the decoder's T_i
        timesteps = torch.as_tensor(timestep, device=sample.device)
        if timesteps.ndim == 0:
            timesteps = timesteps[None]
        timesteps = timesteps.expand(batch_size)
        t_emb = self.time_proj(timesteps).to(dtype=self.dtype)  # (B, block_out_channels[0])
        emb = self.time_embedding(t_emb)  # (B, time_embed_dim)
        if self.class_embedding is not None:
            if class_labels is None:
                raise ValueError("This model has a class embedding (num_class_embeds is set): pass class_labels.")
            if self.config.class_embed_type == "timestep":
                class_labels = self.time_proj(class_labels)
            emb = emb + self.class_embedding(class_labels).to(dtype=self.dtype)
        elif class_labels is not None:
            raise ValueError(
                "class_labels were given but the model has no class embedding; condition through `context`, or "
                "build the model with num_class_embeds."
            )

        # 2. encoder
        skip_sample = sample
        sample = self.conv_in(sample)
        down_block_res_samples = (sample,)
        for down_block in self.down_blocks:
            if hasattr(down_block, "skip_conv"):
                sample, res_samples, skip_sample = down_block(hidden_states=sample, temb=emb, skip_sample=skip_sample)
            else:
                sample, res_samples = down_block(hidden_states=sample, temb=emb)
            down_block_res_samples += res_samples

        # 3. middle
        if self.mid_block is not None:
            sample = self.mid_block(sample, emb)

        # 4. decoder, conditioned before every up block: h <- C_i(c) * h + T_i(t)
        skip_sample = None
        for i, up_block in enumerate(self.up_blocks):
            shift = self.time_mlps[i](emb)  # (B, ch, 1, 1)
            if self.context_mlps is None:
                sample = sample + shift
            else:
                sample = self.context_mlps[i](context) * sample + shift

            res_samples = down_block_res_samples[-len(up_block.resnets) :]
            down_block_res_samples = down_block_res_samples[: -len(up_block.resnets)]
            if hasattr(up_block, "skip_conv"):
                sample, skip_sample = up_block(sample, res_samples, emb, skip_sample)
            else:
                sample = up_block(sample, res_samples, emb)

        # 5. output head
        sample = self.conv_out(self.conv_act(self.conv_norm_out(sample)))
        if skip_sample is not None:
            sample = sample + skip_sample
        if self.config.time_embedding_type == "fourier":
            sample = sample / timesteps.reshape(batch_size, *([1] * (sample.ndim - 1)))

        if not return_dict:
            return (sample,)
        return UNet2DOutput(sample=sample)
