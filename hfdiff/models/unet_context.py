"""ContextUNet2DModel: diffusers' UNet2DModel with the sprite course's decoder conditioning.

Before every up block the decoder features are modulated by the context and shifted by the time:

    h <- C_i(c) * h + T_i(t)

C_i and T_i are small MLPs (Linear-GELU-Linear) from the context vector c and from the time embedding to the
channel count entering up block i. Everything else (blocks, config, save/load, gradient checkpointing) is
UNet2DModel's own.

This module imports only torch and diffusers, so it can be exported next to a saved pipeline as stand-alone code.
"""

from __future__ import annotations

import inspect
import logging

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.models.embeddings import TimestepEmbedding
from diffusers.models.unets.unet_2d import UNet2DModel, UNet2DOutput
from torch import nn


class _NoEmptyFloat32Warning(logging.Filter):
    """Drops diffusers' ModelMixin.to warning that lists the modules to keep in float32 when the list is empty.
    ModelMixin.to tests `self._keep_in_fp32_modules or []` against None, so every dtype cast (`pipe.to(torch.float16)`,
    `from_pretrained(torch_dtype=...)`) of a model that keeps none, this one included, logs "should be kept in float32:
    []". The warning stays for models that do name modules."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "should be kept in float32: []" not in record.getMessage()


logging.getLogger("diffusers.models.modeling_utils").addFilter(_NoEmptyFloat32Warning())

# Named architectures. "sprite-small" is the course scale (1.4M parameters, no attention);
# "sprite-base" is wider and deeper, with self-attention at the lowest resolution (6.7M parameters);
# "sprite-64" is for 64x64 images: a fourth level, so attention runs at 8x8 as sprite-base's does at 4x4 (4.5M).
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
    "sprite-64": {
        "sample_size": 64,
        "block_out_channels": (32, 64, 128, 128),
        "down_block_types": ("DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        "up_block_types": ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
        "layers_per_block": 1,
        "add_attention": True,
        "attention_head_dim": 32,
        "norm_num_groups": 8,
        "context_dim": 5,
    },
}


# Bounds on a UNet config, checked before anything is allocated, so that a hostile or mistyped config.json (10,000
# blocks, a million channels) is refused at once instead of filling memory for minutes. They are far above every
# preset (<= 4 blocks of <= 128 channels, <= 64x64 images, <= 7M parameters) and above sensible user models: Stable
# Diffusion's UNet has 4 blocks of <= 1280 channels, 2 layers per block, 860M parameters.
UNET_CONFIG_LIMITS = {
    "blocks": 8,  # resolutions (entries of block_out_channels, down_block_types, up_block_types): 256x256 -> 2x2
    "block_out_channels": 4096,
    "layers_per_block": 16,
    "sample_size": 4096,  # pixels a side
    "in_channels": 64,
    "out_channels": 64,
    "context_dim": 16384,  # text encoders' widths are 512..4096
    "time_embedding_dim": 16384,
    "context_mlp_dim": 16384,
    "norm_num_groups": 1024,  # GroupNorm groups; each level's channels must be a multiple of it
    "parameters": 4 * 10**9,  # estimated from the convolutions alone (about half the real count; 16 GB in float32)
}


def check_config_limits(config: dict, source: str = "ContextUNet2DModel") -> None:
    """Refuse a config (a dict of ContextUNet2DModel arguments, as config.json holds them) beyond UNET_CONFIG_LIMITS,
    in microseconds and before any allocation, with an error naming `source`, the entry and its limit."""

    def refuse(entry: str, value, limit) -> None:
        long = isinstance(value, (list, tuple)) and len(value) > 4
        shown = f"[{', '.join(map(repr, value[:4]))}, ...] ({len(value)} entries)" if long else value
        raise ValueError(
            f"{source}: {entry}={shown} is beyond what hfdiff builds ({limit}; limits in "
            "hfdiff.models.unet_context.UNET_CONFIG_LIMITS). "
            + (
                f"Change the value in {source}."
                if source.startswith("--")
                else "The config is damaged or not meant for this model: check the file, or save the model again."
            )
        )

    sizes = {}
    for entry in ("block_out_channels", "down_block_types", "up_block_types"):
        value = list(config[entry]) if isinstance(config.get(entry), (list, tuple)) else config.get(entry)
        if isinstance(value, list) and not 1 <= len(value) <= UNET_CONFIG_LIMITS["blocks"]:
            refuse(entry, value, f"1 to {UNET_CONFIG_LIMITS['blocks']} blocks")
    for entry, limit in UNET_CONFIG_LIMITS.items():
        if entry in ("blocks", "parameters") or config.get(entry) is None:
            continue
        value = config[entry]
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= limit for v in values):
            refuse(entry, value, f"whole numbers from 1 to {limit}")
        sizes[entry] = values
    channels, layers = sizes.get("block_out_channels", []), sizes.get("layers_per_block", [1])[0]
    groups = sizes.get("norm_num_groups", [None])[0]
    if groups is not None and any(c % groups for c in channels):
        refuse("norm_num_groups", groups, f"a divisor of every block_out_channels entry {channels} (GroupNorm)")
    # 3x3 convolutions: `layers` resnets per down block, `layers` + 1 per up block taking the skip (about 3 c^2 each
    # for 2 c^2 per down resnet), and the middle block's two resnets.
    estimate = sum(9 * c * c * (2 * layers + 3 * (layers + 1)) for c in channels) + 18 * max(channels, default=0) ** 2
    if estimate > UNET_CONFIG_LIMITS["parameters"]:
        over = f"{UNET_CONFIG_LIMITS['parameters']:,}"
        refuse("block_out_channels", channels, f"{estimate:,} parameters at layers_per_block={layers}, over {over}")


class EmbedMLP(nn.Sequential):
    """Linear-GELU-Linear from an embedding to a channel count: (B, in_dim) -> (B, out_dim, 1, 1). The hidden layer
    is `hidden_dim` wide (default `out_dim`, the course's)."""

    def __init__(self, in_dim: int, out_dim: int, init_bias: float = 0.0, hidden_dim: int | None = None):
        hidden_dim = hidden_dim or out_dim
        super().__init__(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim))
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

    Every UNet2DModel argument keeps its meaning; the additions:

    Args:
        context_dim (`int`, *optional*):
            Length of the context vector: 5 for one-hot sprite classes, larger for text embeddings. `None` builds an
            unconditional model (only the T_i time shifts are added).
        class_names (`list[str]`, *optional*):
            Names of the context entries, in order, when the context is a one-hot class vector (used by the pipeline
            to turn "hero" into a context). Must have `context_dim` entries.
        context_mlp_dim (`int`, *optional*):
            Width of the hidden layer of the context MLPs C_i. `None` (the course's) makes it the channel count of
            the level it scales; a sentence embedding (384 wide for MiniLM) may need more.
        context_time_embedding (`bool`, *optional*, defaults to `False`):
            Also add a projection of the context to the time embedding, which every resnet (encoder, middle and
            decoder) receives, as UNet2DConditionModel's `class_embed_type="projection"` does; the decoder's
            C_i(c) * h stays. `False` is the course's design: the context reaches only the decoder levels.

    Classes are only ever one-hot contexts: `forward(class_labels=...)` takes class indices and builds them, and
    UNet2DModel's own class embedding (`num_class_embeds`, `class_embed_type`) is refused.
    """

    # Where loaders that hold only the class find the size check (the pipeline's from_pretrained, before building).
    check_config_limits = staticmethod(check_config_limits)

    @classmethod
    def check_config_entries(cls, config: dict, source: str = "ContextUNet2DModel") -> None:
        """Refuse a saved pipeline's UNet config with entries this class does not take. Each entry shapes the
        architecture, so one it does not know (an option of a newer hfdiff, say) would be dropped by diffusers with a
        warning and the weights loaded into a different model. Checked by the pipeline's loader only: a model folder
        of diffusers' EMAModel.save_pretrained keeps the EMA's state as extra config entries, which from_pretrained
        must pass over; diffusers' private entries ("_class_name", ...) always pass."""
        takes = set(inspect.signature(cls.__init__).parameters) - {"self"}
        unknown = sorted(key for key in config if not key.startswith("_") and key not in takes)
        if unknown:
            raise ValueError(
                f"{source} has entries {unknown} that the installed hfdiff's {cls.__name__} does not know, so it "
                "would build a different model from the saved one. The pipeline was probably saved by a newer hfdiff: "
                "upgrade it (pip install -U hfdiff), or load the folder with the code saved beside it "
                "(DiffusionPipeline.from_pretrained(path, trust_remote_code=True))."
            )

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
        class_embed_type: str | None = None,  # must be None (classes go through `context`); kept so saved configs load
        num_class_embeds: int | None = None,  # must be None (classes go through `context`); kept so saved configs load
        num_train_timesteps: int | None = None,  # needed only by time_embedding_type="learned"
        context_dim: int | None = 5,  # length of the context vector c; None = unconditional decoder
        class_names: list[str] | None = None,  # names of the one-hot context entries, in order; None = unnamed
        context_mlp_dim: int | None = None,  # hidden width of the context MLPs C_i; None = the level's channels
        context_time_embedding: bool = False,  # also add a projection of c to every resnet's time embedding
    ):
        check_config_limits(
            {
                "block_out_channels": block_out_channels,
                "down_block_types": down_block_types,
                "up_block_types": up_block_types,
                "layers_per_block": layers_per_block,
                "sample_size": sample_size,
                "in_channels": in_channels,
                "out_channels": out_channels,
                "context_dim": context_dim,
                "time_embedding_dim": time_embedding_dim,
                "context_mlp_dim": context_mlp_dim,
                "norm_num_groups": norm_num_groups,
            }
        )
        if num_class_embeds is not None or class_embed_type is not None:
            # One name, one meaning: in hfdiff `class_labels` are the one-hot context classes, never UNet2DModel's
            # class embedding (which would add a second, silently different class conditioning to the time).
            raise ValueError(
                f"ContextUNet2DModel takes classes through its one-hot `context`, not UNet2DModel's class embedding; "
                f"got num_class_embeds={num_class_embeds!r}, class_embed_type={class_embed_type!r}. Leave both None "
                "and build the model with context_dim=<number of classes> (and class_names=[...]); then pass "
                "class_labels= (indices) or context= (one-hot rows) to forward."
            )
        if context_dim is not None and context_dim < 1:
            raise ValueError(f"context_dim must be a positive integer or None, got {context_dim}.")
        if context_time_embedding and context_dim is None:
            raise ValueError(
                "context_time_embedding=True adds the context to the time embedding, but this model is unconditional "
                "(context_dim=None); set context_dim, or leave context_time_embedding=False."
            )
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
            class_embed_type=None,
            num_class_embeds=None,
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
            self.context_mlps = nn.ModuleList(
                EmbedMLP(context_dim, ch, init_bias=1.0, hidden_dim=context_mlp_dim) for ch in up_in_channels
            )
        self.context_embedding = None
        if context_time_embedding:
            self.context_embedding = TimestepEmbedding(context_dim, time_embed_dim)
            # Zero output at first, as the EmbedMLPs: the untrained model is the one without this path.
            nn.init.zeros_(self.context_embedding.linear_2.weight)
            nn.init.zeros_(self.context_embedding.linear_2.bias)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "ContextUNet2DModel":
        """Build a named architecture ("sprite-small", "sprite-base"); keyword arguments override its config."""
        if name not in UNET_PRESETS:
            raise ValueError(f"Unknown preset {name!r}; choose one of {sorted(UNET_PRESETS)}.")
        return cls(**{**UNET_PRESETS[name], **overrides})

    def prepare_context(
        self, context: torch.Tensor | None, batch_size: int, device, dtype, class_labels=None
    ) -> torch.Tensor | None:
        """Check a context against the config and broadcast it: `None` (the null context) or (D,), (1, D), (B, D)
        -> (B, D); or build it from `class_labels` indices (see `one_hot_context`). Returns None for an
        unconditional model."""
        if class_labels is not None:
            if context is not None:
                raise ValueError(
                    "Pass either class_labels or context, not both: class labels become one-hot contexts."
                )
            return self.one_hot_context(class_labels, batch_size, device, dtype)
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

    def one_hot_context(self, class_labels, batch_size: int, device, dtype) -> torch.Tensor:
        """Class indices -> one-hot contexts: (B,), (1,), () or a list of ints -> (B, context_dim). Names ("hero")
        are the pipeline's job (`SpriteDiffusionPipeline.encode_class_labels`)."""
        context_dim = self.config.context_dim
        if context_dim is None:
            raise ValueError(
                "class_labels were given but this model is unconditional (context_dim=None); drop class_labels, or "
                "train a conditional model (e.g. with train_conditional.py)."
            )
        labels = torch.as_tensor(class_labels, device=device)
        if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
            raise ValueError(
                f"class_labels must be integer class indices, got dtype {labels.dtype}; pass e.g. "
                "torch.tensor([0, 3]), or pass soft/mixed classes as `context` rows instead."
            )
        labels = labels.reshape(-1) if labels.ndim == 0 else labels
        if labels.ndim != 1 or labels.shape[0] not in (1, batch_size):
            raise ValueError(
                f"class_labels has shape {tuple(labels.shape)} but the batch has {batch_size} images; pass one class "
                f"index per image, ({batch_size},), or a single one for all of them."
            )
        # The range check reads the labels back to the host (a device sync), which is why the CUDA-graph fast paths
        # (fast_sampling, training's step) hand the UNet ready-made `context` rows instead.
        if labels.min() < 0 or labels.max() >= context_dim:
            raise ValueError(
                f"class_labels {labels.tolist()} are out of range: this model has {context_dim} classes, so indices "
                f"must lie in [0, {context_dim - 1}]."
            )
        one_hot = torch.nn.functional.one_hot(labels, context_dim).to(dtype)  # (B or 1, context_dim)
        return one_hot.expand(batch_size, -1)

    def embed_timesteps(self, timestep, batch_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """() or (B,) timesteps, or a Python number -> the (B,) timesteps and their (B, time_embed_dim) embedding."""
        # hfdiff: `expand` instead of diffusers' multiply by ones (no kernel), and a Python float stays a float where
        # diffusers truncates it to an integer.
        timesteps = torch.as_tensor(timestep, device=device)
        if timesteps.ndim == 0:
            timesteps = timesteps[None]
        timesteps = timesteps.expand(batch_size)
        # time_proj has no weights and always returns float32; the time embedding may run in half precision.
        t_emb = self.time_proj(timesteps).to(dtype=self.dtype)  # (B, block_out_channels[0])
        return timesteps, self.time_embedding(t_emb)

    def modulate(self, i: int, sample: torch.Tensor, context: torch.Tensor | None, emb: torch.Tensor) -> torch.Tensor:
        """The decoder conditioning before up block i: h <- C_i(c) * h + T_i(t), for (B, ch, h, w) features."""
        shift = self.time_mlps[i](emb)  # (B, ch, 1, 1)
        if self.context_mlps is None:
            return sample + shift
        return self.context_mlps[i](context) * sample + shift

    # Copied from diffusers.models.unets.unet_2d.UNet2DModel.forward (diffusers 0.42.1) with changes, each marked
    # "hfdiff:"; the step numbers are diffusers'. UNet2DModel's forward has no way to hand a context to its up blocks
    # (only sample, res_samples and the time embedding reach them), so wrapping or hooking the up blocks would mean
    # stashing the context on the module between calls; the copy keeps it an argument. tests/test_models.py fails
    # when diffusers' forward changes (`test_copied_forward_*`): re-diff this copy against the new one, then update
    # the hashes there.
    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        context: torch.Tensor | None = None,
        class_labels: torch.Tensor | list[int] | None = None,
        return_dict: bool = True,
    ) -> UNet2DOutput | tuple:
        r"""
        Predict the denoising target from a noisy sample.

        Args:
            sample: (B, C, H, W) noisy images x_t, in [-1, 1] at t = 0.
            timestep: () or (B,) integer timesteps t (a Python number is broadcast to the batch).
            context: (B, context_dim), (1, context_dim) or (context_dim,) context vectors c; None (with no
                class_labels) is the null context.
            class_labels: (B,) or (1,) integer class indices, turned into one-hot contexts; instead of `context`.
            return_dict: return a `UNet2DOutput` rather than a tuple.

        Returns:
            `UNet2DOutput` whose `sample` is (B, out_channels, H, W).
        """
        # hfdiff: inputs checked up front, so a mistake is a ValueError naming the fix rather than a shape error
        # from inside a convolution; class labels become one-hot contexts (diffusers feeds them to a class
        # embedding, which __init__ refuses, so diffusers' class-embedding branch of step 1 is gone).
        self.check_sample_shape(sample)
        batch_size = sample.shape[0]
        context = self.prepare_context(context, batch_size, sample.device, sample.dtype, class_labels)  # (B, D) | None

        # 0. center input if necessary
        if self.config.center_input_sample:
            sample = 2 * sample - 1.0

        # 1. time
        timesteps, emb = self.embed_timesteps(timestep, batch_size, sample.device)  # (B,), (B, time_embed_dim)
        if self.context_embedding is not None:
            # hfdiff: the context's projection joins the time embedding, where diffusers' step 1 adds its class
            # embedding (the `class_embed_type="projection"` of UNet2DConditionModel)
            emb = emb + self.context_embedding(context.to(emb.dtype))

        # 2. pre-process
        skip_sample = sample
        sample = self.conv_in(sample)

        # 3. down
        down_block_res_samples = (sample,)
        for downsample_block in self.down_blocks:
            if hasattr(downsample_block, "skip_conv"):
                sample, res_samples, skip_sample = downsample_block(
                    hidden_states=sample, temb=emb, skip_sample=skip_sample
                )
            else:
                sample, res_samples = downsample_block(hidden_states=sample, temb=emb)
            down_block_res_samples += res_samples

        # 4. mid
        if self.mid_block is not None:
            sample = self.mid_block(sample, emb)

        # 5. up
        skip_sample = None
        for i, upsample_block in enumerate(self.up_blocks):
            sample = self.modulate(i, sample, context, emb)  # hfdiff: the decoder conditioning
            res_samples = down_block_res_samples[-len(upsample_block.resnets) :]
            down_block_res_samples = down_block_res_samples[: -len(upsample_block.resnets)]
            if hasattr(upsample_block, "skip_conv"):
                sample, skip_sample = upsample_block(sample, res_samples, emb, skip_sample)
            else:
                sample = upsample_block(sample, res_samples, emb)

        # 6. post-process
        sample = self.conv_out(self.conv_act(self.conv_norm_out(sample)))
        if skip_sample is not None:
            sample = sample + skip_sample  # hfdiff: not in place, so autograd and CUDA graphs never see a mutation
        if self.config.time_embedding_type == "fourier":
            sample = sample / timesteps.reshape(batch_size, *([1] * (sample.ndim - 1)))

        if not return_dict:
            return (sample,)
        return UNet2DOutput(sample=sample)
