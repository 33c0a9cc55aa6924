"""Pictures of a sprite diffusion model: sample grids, the forward process, denoising GIFs, sampler comparisons,
noise schedules, the timestep embedding and context mixtures.

    from hfdiff import SpriteDiffusionPipeline
    from hfdiff import visualize as vis

    pipe = SpriteDiffusionPipeline.from_pretrained("sprite-model")
    vis.class_grid(pipe, per_class=8, generator=torch.manual_seed(0)).save("samples.png")
    vis.save_gif(vis.denoising_frames(pipe, generator=torch.manual_seed(0)), "denoising.gif")
    vis.schedule_curves().save("schedules.png")                 # needs no model

Every function that samples takes the pipeline's own keywords (`num_inference_steps`, `eta`, `extra_noise`,
`guidance_scale`, `generator`) and returns PIL images; None leaves one to the pipeline's defaults (its scheduler's
recipe, `sampling_defaults`). Comparisons draw the starting noise x_T once and pass it to
every variant through `latents=`, with each variant's step noise drawn from its own copy of `generator`, so the panels
differ only by what is being compared. Sample grids are drawn with PIL and diffusers' make_image_grid; the plots
(schedules, timestep embedding) with matplotlib, the optional extra `pip install "hfdiff[plots]"`, imported only
when a plot is drawn.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import PIL.Image
import torch
from diffusers.utils import make_image_grid
from diffusers.utils.torch_utils import randn_tensor
from PIL import ImageDraw, ImageFont

from hfdiff.data import SPRITE_CLASSES, generate_sprites
from hfdiff.pipelines.image_processing import postprocess_sample, upscale_images
from hfdiff.samplers import with_sampler

# The course's context-mixture examples: row label -> {class name: weight}; names as in SPRITE_CLASSES.
CLASSIC_MIXTURES: dict[str, dict[str, float]] = {
    "hero + 0.6 food": {"hero": 1.0, "food": 0.6},
    "0.6 food + 0.4 spell": {"food": 0.6, "spell/weapon": 0.4},
    "hero + side-facing": {"hero": 1.0, "side-facing": 1.0},
    "hero + non-hero": {"hero": 1.0, "non-hero": 1.0},
    "hero + spell": {"hero": 1.0, "spell/weapon": 1.0},
}
# Plot label -> diffusers beta_schedule name.
SCHEDULES = {"linear": "linear", "cosine": "squaredcos_cap_v2", "sigmoid": "sigmoid"}
MAX_CLASS_ROWS = 10  # grids of models with more classes show the first ten
UNCONDITIONAL_ROWS = 5  # rows of a grid for an unconditional model
SCALE = 4  # default upscaling of 16x16 sprites (nearest neighbour, so pixels stay crisp)

_BACKGROUND = (255, 255, 255)
_INK = (20, 20, 20)


# ----------------------------------------------------------------------------------------------------------------
# Sampling helpers shared by the pictures (and by hfdiff.evaluate)
# ----------------------------------------------------------------------------------------------------------------


def draw_latents(pipe, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Starting noise x_T ~ N(0, I) for `pipe`'s UNet: (B, C, H, W), drawn from `generator` on the pipeline's device."""
    config = pipe.unet.config
    size = config.sample_size
    height, width = (size, size) if isinstance(size, int) else size
    shape = (batch_size, config.in_channels, height, width)
    return randn_tensor(shape, generator=generator, device=pipe.device, dtype=pipe.unet.dtype)


def fork(generator: torch.Generator | None) -> torch.Generator | None:
    """A new generator in the same state as `generator` (so two variants draw the same step noise), or None."""
    if generator is None:
        return None
    copy = torch.Generator(device=generator.device)
    copy.set_state(generator.get_state())
    return copy


def grid_labels(pipe, rows: int | None = None) -> tuple[list[int] | None, list[str]]:
    """Class indices and row names for a row-per-class grid: the model's first `rows` (at most MAX_CLASS_ROWS)
    classes, or (None, []) for an unconditional model."""
    context_dim = pipe.unet.config.context_dim
    if context_dim is None:
        return None, []
    count = min(context_dim, MAX_CLASS_ROWS) if rows is None else rows
    names = pipe.class_names or [f"class {k}" for k in range(context_dim)]
    return list(range(count)), names[:count]


def resolve_classes(pipe, class_names: Sequence[str | int] | None) -> tuple[list[int] | None, list[str]]:
    """Class names or indices chosen by a user -> (indices, row labels); None = the model's classes (grid_labels)."""
    if class_names is None:
        return grid_labels(pipe)
    if pipe.unet.config.context_dim is None:
        raise ValueError(
            f"Classes {list(class_names)} were asked for, but this model is unconditional (context_dim=None); "
            "leave the classes out to get a plain grid."
        )
    one_hot = pipe.encode_class_labels(list(class_names), len(class_names))  # validates names and indices
    indices = one_hot.argmax(dim=1).tolist()
    names = pipe.class_names or [f"class {k}" for k in range(pipe.unet.config.context_dim)]
    return indices, [names[k] for k in indices]


# ----------------------------------------------------------------------------------------------------------------
# Drawing primitives (PIL for sprite grids, matplotlib for plots)
# ----------------------------------------------------------------------------------------------------------------


def _font(size: int = 11) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # a scalable font where Pillow has FreeType
    except (TypeError, OSError):
        return ImageFont.load_default()


def _text_size(text: str, font) -> tuple[int, int]:
    left, top, right, bottom = ImageDraw.Draw(PIL.Image.new("RGB", (1, 1))).textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def upscale(images: Sequence[PIL.Image.Image], scale: int = SCALE) -> list[PIL.Image.Image]:
    """Nearest-neighbour upscaling (crisp pixels) of each image by an integer factor (the pipeline's helper)."""
    return upscale_images(images, scale)


def labelled_rows(
    rows: Sequence[Sequence[PIL.Image.Image]], labels: Sequence[str] = (), gap: int = 2
) -> PIL.Image.Image:
    """Rows of equal-sized images (each row a make_image_grid strip), with `labels` written left of each row."""
    font = _font()
    strips = [make_image_grid(list(row), rows=1, cols=len(row)) for row in rows]
    label_width = max((_text_size(label, font)[0] for label in labels), default=-8) + 8
    width = label_width + max(strip.width for strip in strips)
    height = sum(strip.height for strip in strips) + gap * (len(strips) - 1)
    canvas = PIL.Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    y = 0
    for i, strip in enumerate(strips):
        canvas.paste(strip, (label_width, y))
        if i < len(labels):
            text_height = _text_size(labels[i], font)[1]
            draw.text((4, y + (strip.height - text_height) // 2), labels[i], fill=_INK, font=font)
        y += strip.height + gap
    return canvas


def titled(image: PIL.Image.Image, title: str, position: str = "top") -> PIL.Image.Image:
    """`image` with `title` written in a band above (or below) it."""
    font = _font(12)
    text_width, _ = _text_size(title, font)
    band = _text_size("Ag_|", font)[1] + 10  # one line height for every title, so that panels line up
    canvas = PIL.Image.new("RGB", (max(image.width, text_width + 8), image.height + band), _BACKGROUND)
    text_y = 4 if position == "top" else image.height + 4
    canvas.paste(image, (0, band if position == "top" else 0))
    ImageDraw.Draw(canvas).text((4, text_y), title, fill=_INK, font=font)
    return canvas


def hstack(images: Sequence[PIL.Image.Image], gap: int = 12) -> PIL.Image.Image:
    """Images side by side, top-aligned, `gap` white pixels apart."""
    width = sum(image.width for image in images) + gap * (len(images) - 1)
    canvas = PIL.Image.new("RGB", (width, max(image.height for image in images)), _BACKGROUND)
    x = 0
    for image in images:
        canvas.paste(image, (x, 0))
        x += image.width + gap
    return canvas


def require_matplotlib():
    """matplotlib's (Figure, FigureCanvasAgg), imported on first use: only the plots need matplotlib, not sampling,
    training or sample grids. Raises an ImportError that names the extra to install when it is missing."""
    try:
        import matplotlib  # noqa: F401  (first: a matplotlib blocked in sys.modules fails even if submodules are loaded)
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "hfdiff's plots (noise schedules, timestep embedding, the DDPM vs DDIM report) are drawn with matplotlib, "
            'which is not installed; install it with `pip install "hfdiff[plots]"`. Sampling, training and sample '
            "grids do not need it."
        ) from error
    return Figure, FigureCanvasAgg


def plot_figure(panels: int = 1, panel_size: tuple[float, float] = (4.4, 3.4), dpi: int = 100):
    """A matplotlib Figure with `panels` axes side by side, each `panel_size` inches: (figure, [axes, ...]).

    Built on its own Agg canvas (no pyplot, so no global state and no display needed); render it with
    `figure_to_image`."""
    Figure, FigureCanvasAgg = require_matplotlib()
    figure = Figure(figsize=(panel_size[0] * panels, panel_size[1]), dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, list(figure.subplots(1, panels, squeeze=False)[0])


def figure_to_image(figure) -> PIL.Image.Image:
    """Render a figure from `plot_figure` to an RGB PIL image (figure size x dpi pixels)."""
    figure.canvas.draw()
    return PIL.Image.fromarray(np.asarray(figure.canvas.buffer_rgba())).convert("RGB")


# ----------------------------------------------------------------------------------------------------------------
# Pictures
# ----------------------------------------------------------------------------------------------------------------


def class_grid(
    pipe,
    per_class: int = 8,
    class_names: Sequence[str | int] | None = None,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    eta: float | None = None,
    extra_noise: bool = True,
    generator: torch.Generator | None = None,
    scale: int = SCALE,
) -> PIL.Image.Image:
    """A sample grid with one row per class, each row labelled with its class name.

    `class_names` picks the rows (names or indices); None = every class of the model (the first ten). An
    unconditional model gets a plain, unlabelled grid of UNCONDITIONAL_ROWS rows instead (asking it for named
    classes is a ValueError)."""
    indices, labels = resolve_classes(pipe, class_names)
    rows = len(indices) if indices is not None else UNCONDITIONAL_ROWS
    images = pipe(
        batch_size=rows * per_class,
        class_labels=[k for k in indices for _ in range(per_class)] if indices is not None else None,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        eta=eta,
        extra_noise=extra_noise,
        generator=generator,
    ).images
    images = upscale(images, scale)
    return labelled_rows([images[r * per_class : (r + 1) * per_class] for r in range(rows)], labels)


def sprite_image(class_name: str = "hero", seed: int = 0) -> torch.Tensor:
    """One procedural sprite of `class_name` (an entry of SPRITE_CLASSES) as (3, 16, 16) in [-1, 1]."""
    if class_name not in SPRITE_CLASSES:
        raise ValueError(f"Unknown class name {class_name!r}; the procedural sprites have {list(SPRITE_CLASSES)}.")
    images, labels = generate_sprites(len(SPRITE_CLASSES), seed=seed)  # one of each class
    image = images[labels == SPRITE_CLASSES.index(class_name)][0]
    return torch.from_numpy(image).permute(2, 0, 1).float() / 127.5 - 1


def default_forward_timesteps(num_train_timesteps: int) -> list[int]:
    """0, 5%, 10%, 20%, 40%, 60%, 80% and 100% of the chain: where the image fades out, at a glance."""
    return sorted({round(f * (num_train_timesteps - 1)) for f in (0, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0)})


def forward_process(
    image: torch.Tensor,
    scheduler,
    timesteps: Sequence[int] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The clean image followed by x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (DDPM eq. 4) at each t, all with the
    same eps so that only t changes along the strip.

    image: (C, H, W) or (1, C, H, W) in [-1, 1]. Returns (1 + len(timesteps), C, H, W): x_0, then x_t per t."""
    num_train_timesteps = scheduler.config.num_train_timesteps
    timesteps = list(default_forward_timesteps(num_train_timesteps) if timesteps is None else timesteps)
    bad = [t for t in timesteps if not 0 <= t < num_train_timesteps]
    if bad:
        raise ValueError(f"timesteps {bad} are outside 0..{num_train_timesteps - 1}, the scheduler's training steps.")
    x0 = image[None] if image.ndim == 3 else image  # (1, C, H, W)
    noise = randn_tensor(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    count = len(timesteps)
    noisy = scheduler.add_noise(
        x0.expand(count, -1, -1, -1), noise.expand(count, -1, -1, -1), torch.tensor(timesteps, device=x0.device)
    )
    return torch.cat([x0, noisy])


def forward_process_strip(
    image: torch.Tensor | None = None,
    scheduler=None,
    timesteps: Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    scale: int = SCALE * 2,
) -> PIL.Image.Image:
    """The forward (noising) process of one image as a labelled strip: "x_0", then "t = ..." panels.

    image: (C, H, W) in [-1, 1]; None = a procedural hero. scheduler: None = SpriteDDPMScheduler's defaults."""
    if scheduler is None:
        from hfdiff.schedulers import SpriteDDPMScheduler

        scheduler = SpriteDDPMScheduler()
    image = sprite_image() if image is None else image
    timesteps = default_forward_timesteps(scheduler.config.num_train_timesteps) if timesteps is None else timesteps
    panels = forward_process(image, scheduler, timesteps, generator)
    pil = upscale(_to_pil(panels), scale)
    labelled = [titled(panel, label, "bottom") for panel, label in zip(pil, ["x_0"] + [f"t = {t}" for t in timesteps])]
    return hstack(labelled, gap=6)


def _to_pil(sample: torch.Tensor) -> list[PIL.Image.Image]:
    """sample: (B, C, H, W) in about [-1, 1] -> PIL images, by the pipeline's own conversion."""

    return postprocess_sample(sample.float().cpu(), "pil")


def denoising_frames(
    pipe,
    class_labels: Sequence[str | int] | None = None,
    every: int | None = None,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    eta: float | None = None,
    extra_noise: bool = True,
    generator: torch.Generator | None = None,
    scale: int = SCALE,
) -> list[PIL.Image.Image]:
    """Frames of the denoising trajectory x_T -> x_0 (for `save_gif`): one image per class label side by side, a
    frame every `every` steps plus the last, each captioned with its step.

    class_labels: one image per entry; None = one per class of the model (five images for an unconditional one).
    every: None = about 25 frames whatever the step count. Returns x_T, then steps 0, every, 2 every, ... and the
    last of the N steps (1 + ceil(N / every) frames, one more when N - 1 is not a multiple of every)."""
    from hfdiff.pipelines import TrajectoryRecorder

    indices, _ = resolve_classes(pipe, class_labels)
    batch_size = len(indices) if indices is not None else UNCONDITIONAL_ROWS
    pipe.scheduler.set_timesteps(num_inference_steps or pipe.sampling_defaults["num_inference_steps"])
    steps = len(pipe.scheduler.timesteps)
    every = every or max(1, steps // 25)
    latents = draw_latents(pipe, batch_size, generator)
    recorder = TrajectoryRecorder(every=every)
    pipe(
        batch_size=batch_size,
        class_labels=indices,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        eta=eta,
        extra_noise=extra_noise,
        generator=generator,
        latents=latents,
        callback_on_step_end=recorder,
    )
    recorded = [i for i in range(steps) if i % every == 0 or i == steps - 1]  # TrajectoryRecorder's rule
    captions = ["x_T (pure noise)"] + [f"step {i + 1}/{steps}" for i in recorded]
    recorder.samples.insert(0, (latents * pipe.scheduler.init_noise_sigma).float().cpu())
    frames = [titled(frame, caption, "bottom") for frame, caption in zip(recorder.frames(scale=scale), captions)]
    size = (max(frame.width for frame in frames), max(frame.height for frame in frames))
    canvases = [PIL.Image.new("RGB", size, _BACKGROUND) for _ in frames]  # a GIF's frames share one size
    for canvas, frame in zip(canvases, frames):
        canvas.paste(frame, (0, 0))
    return canvases


def save_gif(frames: Sequence[PIL.Image.Image], path: str | os.PathLike, fps: int = 10, hold_s: float = 1.5) -> str:
    """Write `frames` as a looping GIF, holding the last one `hold_s` seconds. Written with PIL rather than
    diffusers' export_to_gif, which gives every frame the same duration: without the hold the finished sample
    flashes by before the loop restarts from noise."""
    if not frames:
        raise ValueError("No frames to write; denoising_frames returns at least two.")
    durations = [round(1000 / fps)] * (len(frames) - 1) + [round(1000 * hold_s)]
    frames[0].save(path, save_all=True, append_images=list(frames[1:]), duration=durations, loop=0, optimize=False)
    return str(path)


def _rows_of(pipe, per_class: int, class_names) -> tuple[list[int] | None, list[str], int]:
    indices, labels = resolve_classes(pipe, class_names)
    rows = len(indices) if indices is not None else UNCONDITIONAL_ROWS
    return indices, labels, rows


def _same_start_panels(pipe, variants, per_class, class_names, generator, scale, common) -> PIL.Image.Image:
    """Sample every (title, pipeline, keywords) variant from the same x_T and step-noise generator state; the panels
    (row-per-class grids) side by side under their titles."""
    indices, labels, rows = _rows_of(pipe, per_class, class_names)
    class_labels = [k for k in indices for _ in range(per_class)] if indices is not None else None
    latents = draw_latents(pipe, rows * per_class, generator)
    panels = []
    for title, variant, kwargs in variants:
        images = variant(
            batch_size=rows * per_class,
            class_labels=class_labels,
            latents=latents,
            generator=fork(generator),
            **{**common, **kwargs},
        ).images
        images = upscale(images, scale)
        grid = labelled_rows([images[r * per_class : (r + 1) * per_class] for r in range(rows)], labels)
        panels.append(titled(grid, title))
    return hstack(panels, gap=16)


def extra_noise_comparison(
    pipe,
    per_class: int = 4,
    class_names: Sequence[str | int] | None = None,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    generator: torch.Generator | None = None,
    scale: int = SCALE,
) -> PIL.Image.Image:
    """DDPM with the sigma_t z term (left) and without it (right, `extra_noise=False`), from the same x_T: without
    the noise added back, samples collapse towards smooth, blurry averages. Uses SpriteDDPMScheduler with `pipe`'s
    schedule, whatever scheduler `pipe` has."""
    ddpm = with_sampler(pipe, "ddpm")
    variants = [
        ("DDPM, with extra noise", ddpm, {"extra_noise": True}),
        ("DDPM, without extra noise", ddpm, {"extra_noise": False}),
    ]
    common = {"num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale}
    return _same_start_panels(pipe, variants, per_class, class_names, generator, scale, common)


def sampler_comparison(
    pipe,
    per_class: int = 4,
    class_names: Sequence[str | int] | None = None,
    num_inference_steps: int | None = None,
    ddpm_steps: int | None = None,
    eta: float | None = None,
    guidance_scale: float | None = None,
    generator: torch.Generator | None = None,
    scale: int = SCALE,
) -> PIL.Image.Image:
    """DDPM (`ddpm_steps`, None = every training step) beside DDIM (`num_inference_steps`, None = 25 or T if fewer;
    `eta`), from the same x_T.

    With eta = 0 DDIM is a deterministic map of x_T, so where DDPM's extra noise lets a sample wander, DDIM's keeps
    the layout its starting noise suggests."""
    num_train_timesteps = pipe.scheduler.config.num_train_timesteps
    ddpm_steps = ddpm_steps or num_train_timesteps
    eta = 0.0 if eta is None else eta
    num_inference_steps = num_inference_steps or min(25, num_train_timesteps)
    variants = [
        (f"DDPM, {ddpm_steps} steps", with_sampler(pipe, "ddpm"), {"num_inference_steps": ddpm_steps}),
        (
            f"DDIM eta={eta:g}, {num_inference_steps} steps",
            with_sampler(pipe, "ddim"),
            {"num_inference_steps": num_inference_steps, "eta": eta},
        ),
    ]
    return _same_start_panels(
        pipe, variants, per_class, class_names, generator, scale, {"guidance_scale": guidance_scale}
    )


def mixture_contexts(pipe, mixtures: Mapping[str, Mapping[str, float]] = CLASSIC_MIXTURES) -> torch.Tensor:
    """Mixtures {label: {class name: weight}} -> context vectors (M, context_dim) for `pipe`'s model. A model without
    class names but with five context entries is read in the course's order (SPRITE_CLASSES)."""
    context_dim = pipe.unet.config.context_dim
    if context_dim is None:
        raise ValueError(
            "Context mixtures need a conditional model, but this one is unconditional (context_dim=None)."
        )
    names = pipe.class_names or (list(SPRITE_CLASSES) if context_dim == len(SPRITE_CLASSES) else None)
    if names is None:
        raise ValueError(
            f"This model has {context_dim} unnamed context entries, so class names cannot be mapped to them; pass "
            "contexts directly to the pipeline instead."
        )
    contexts = torch.zeros(len(mixtures), context_dim)
    for row, (label, weights) in enumerate(mixtures.items()):
        for name, weight in weights.items():
            if name not in names:
                raise ValueError(f"Mixture {label!r} uses unknown class name {name!r}; this model knows {names}.")
            contexts[row, names.index(name)] = weight
    return contexts


def context_mixture_grid(
    pipe,
    mixtures: Mapping[str, Mapping[str, float]] = CLASSIC_MIXTURES,
    per_mixture: int = 6,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    eta: float | None = None,
    extra_noise: bool = True,
    generator: torch.Generator | None = None,
    scale: int = SCALE,
) -> PIL.Image.Image:
    """A row per context mixture (default: the course's hero + 0.6 food, 0.6 food + 0.4 spell, hero + side-facing,
    hero + non-hero, hero + spell), labelled. Column j starts from the same x_T in every row, so rows differ only by
    their context."""
    contexts = mixture_contexts(pipe, mixtures)  # (M, D)
    count = len(mixtures)
    latents = draw_latents(pipe, per_mixture, generator).repeat(count, 1, 1, 1)  # (M * per_mixture, C, H, W)
    images = pipe(
        batch_size=count * per_mixture,
        context=contexts.repeat_interleave(per_mixture, dim=0),
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        eta=eta,
        extra_noise=extra_noise,
        generator=generator,
        latents=latents,
    ).images
    images = upscale(images, scale)
    return labelled_rows([images[r * per_mixture : (r + 1) * per_mixture] for r in range(count)], list(mixtures))


def schedule_data(scheduler=None, num_train_timesteps: int | None = None) -> dict[str, dict[str, np.ndarray]]:
    """betas and alphas_cumprod of the linear, cosine and sigmoid schedules, read from SpriteDDPMScheduler built
    with each (beta_start/beta_end from `scheduler`'s config when given). Returns {label: {"betas", "alphas_cumprod"}}
    with arrays of shape (T,)."""
    from hfdiff.schedulers import SpriteDDPMScheduler

    config = dict(scheduler.config) if scheduler is not None else {}
    if num_train_timesteps is not None:
        config["num_train_timesteps"] = num_train_timesteps
    data = {}
    for label, beta_schedule in SCHEDULES.items():
        built = SpriteDDPMScheduler.from_config({**config, "beta_schedule": beta_schedule, "trained_betas": None})
        data[label] = {"betas": built.betas.double().numpy(), "alphas_cumprod": built.alphas_cumprod.double().numpy()}
    return data


def schedule_curves(scheduler=None, num_train_timesteps: int | None = None) -> PIL.Image.Image:
    """beta_t (log scale: the cosine schedule's last betas reach 0.999) and abar_t against t for the linear, cosine
    and sigmoid schedules (`schedule_data`), side by side. Needs matplotlib (`pip install "hfdiff[plots]"`)."""
    data = schedule_data(scheduler, num_train_timesteps)
    figure, (betas, abar) = plot_figure(2)
    for label, curves in data.items():
        t = np.arange(len(curves["betas"]))
        betas.plot(t, curves["betas"], label=label)
        abar.plot(t, curves["alphas_cumprod"], label=label)
    betas.set(yscale="log", title=r"$\beta_t$: noise added at step $t$", xlabel="$t$", ylabel=r"$\beta_t$ (log)")
    abar.set(title=r"$\bar\alpha_t$ (alphas_cumprod): signal kept at $t$", xlabel="$t$", ylabel=r"$\bar\alpha_t$")
    for axes in (betas, abar):
        axes.grid(alpha=0.3)
        axes.legend()
    return figure_to_image(figure)


def timestep_embedding(unet, num_train_timesteps: int = 500) -> np.ndarray:
    """The UNet's own sinusoidal timestep projection (diffusers' Timesteps, `unet.time_proj`) at t = 0..T-1:
    (T, block_out_channels[0]), before the learned time MLP."""
    with torch.no_grad():
        return unet.time_proj(torch.arange(num_train_timesteps, device=unet.device)).float().cpu().numpy()


def timestep_embedding_heatmap(unet, num_train_timesteps: int = 500) -> PIL.Image.Image:
    """The timestep embedding (`timestep_embedding`) as a heat map: a row per t (top t = 0), a column per channel,
    colour = value in [-1, 1]. The high-frequency channels change from row to row, the low-frequency ones over the
    whole chain. Needs matplotlib (`pip install "hfdiff[plots]"`)."""
    embedding = timestep_embedding(unet, num_train_timesteps)  # (T, D)
    figure, (axes,) = plot_figure(1, panel_size=(6.0, 6.6))  # 1 pixel or more per t for T = 500
    heat = axes.imshow(embedding, aspect="auto", cmap="viridis", vmin=-1, vmax=1, interpolation="nearest")
    figure.colorbar(heat, ax=axes, label="value")
    halves = "cos | sin" if unet.config.flip_sin_to_cos else "sin | cos"
    axes.set(
        title=f"timestep embedding (unet.time_proj), T = {num_train_timesteps}",
        xlabel=f"channel 0..{embedding.shape[1] - 1}: {halves}, each half from high to low frequency",
        ylabel="$t$",
    )
    return figure_to_image(figure)
