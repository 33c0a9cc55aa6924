"""A web demo of a saved pipeline: `hfdiff demo MODEL` serves a Gradio app, and a Hub Space runs the same app.

    hfdiff demo sprite-model                        # http://127.0.0.1:7860: class, mixture, sampler, steps, seed
    hfdiff demo user/sprite-model --port 8000       # a Hub id (HF_HUB_OFFLINE=1: from the HF cache)
    pipe.save_pretrained("sprite-model", demo_app=True)   # + app.py and requirements.txt: the folder runs as a Space

The page shows only the controls the model takes: a class and a context mixture (one slider per class, the course's
mixtures as presets) for a class model, a prompt and a negative prompt for a text model, neither for an unconditional
one; then guidance, sampler and steps, number of images and seed. Sampling goes through the pipeline's `__call__`
(its `callback_on_step_end` drives the progress bar and records the denoising GIF). The endpoint is `generate`:

    from gradio_client import Client
    Client("http://127.0.0.1:7860").predict(..., api_name="/generate")

Gradio is the optional extra `pip install "hfdiff[demo]"`, imported only when an app is built.
"""

from __future__ import annotations

import inspect
import math
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import PIL.Image
import torch

from hfdiff.demo_app import MAX_BATCH
from hfdiff.pipeline_loading import load_pipeline
from hfdiff.pipelines.image_processing import postprocess_sample, upscale_images
from hfdiff.samplers import RECOMMENDED, SAMPLERS, with_sampler
from hfdiff.visualize import CLASSIC_MIXTURES, labelled_rows, mixture_contexts, save_gif, titled

MAX_SLIDERS = 10  # unnamed context vectors longer than this get no mixture sliders (a text model's 384 entries)
GRID_COLUMNS = 8  # the most sprites to a row of the grid (at least 4, about square in between)
DISPLAY_SIZE = 128  # sprites are shown about this many pixels wide (16x16 sprites: upscaled 8x, nearest neighbour)
MIXTURE = "mixture (sliders)"  # the class choice that samples the sliders' context vector
KEEP_GIFS = 16  # denoising GIFs kept in the demo's own folder
# Keeps sprites blocky in the browser too: the <img> is scaled to the page's width, and browsers smooth by default.
# Gradio 6 takes page CSS in launch(), so serve() and the Space's app.py pass it there.
PIXELATED_CSS = "img { image-rendering: pixelated; }"


def require_gradio():
    """The gradio module, or an ImportError that names the extra to install."""
    try:
        import gradio
    except ImportError as error:
        raise ImportError(
            'The web demo needs gradio, which is not installed; install it with `pip install "hfdiff[demo]"`.'
        ) from error
    return gradio


@dataclass
class Controls:
    """What the page offers for a model: class names (None: no class control), mixture presets (name -> slider
    values; empty with `mixture=False`), text prompts, and guidance (which needs a context to guide towards)."""

    class_names: list[str] | None
    mixture: bool
    presets: dict[str, list[float]] = field(default_factory=dict)
    text: bool = False
    guidance: bool = False


def model_controls(pipe) -> Controls:
    """The controls `pipe`'s model supports: read from its text encoder and `unet.config` (context_dim, class_names)."""
    context_dim = pipe.unet.config.context_dim
    if getattr(pipe, "text_encoder", None) is not None:
        return Controls(class_names=None, mixture=False, text=True, guidance=True)
    if context_dim is None:
        return Controls(class_names=None, mixture=False)
    if pipe.class_names is None and context_dim > MAX_SLIDERS:
        return Controls(class_names=None, mixture=False, guidance=True)  # only raw context vectors fit this model
    names = pipe.class_names or [f"class {k}" for k in range(context_dim)]
    if len(names) > MAX_SLIDERS:  # a slider per class stops being usable; the class list still is
        return Controls(class_names=names, mixture=False, guidance=True)
    return Controls(class_names=names, mixture=True, presets=mixture_presets(pipe), guidance=True)


def mixture_presets(pipe) -> dict[str, list[float]]:
    """The course's mixtures (hfdiff.visualize.CLASSIC_MIXTURES) that `pipe`'s classes can express, as slider values
    (one weight per class); a model without those class names gets none."""
    presets = {}
    for label, weights in CLASSIC_MIXTURES.items():
        try:
            presets[label] = [round(w, 4) for w in mixture_contexts(pipe, {label: weights})[0].tolist()]
        except ValueError:  # a class this model does not have
            continue
    return presets


@dataclass
class Request:
    """One press of "generate". `mixture`: one weight per class, used when `class_name` is MIXTURE."""

    num_images: int = 4
    seed: int = 0
    sampler: str = RECOMMENDED  # a name of hfdiff.samplers.SAMPLERS (the dropdown, in its order)
    steps: int | None = None  # None: the sampler's own (`Demo.sampler_defaults`), as in Python and the CLI
    eta: float | None = None
    guidance_scale: float | None = None
    class_name: str | None = None
    mixture: Sequence[float] = ()
    prompt: str = ""
    negative_prompt: str = ""
    gif: bool = False


@dataclass
class Result:
    grid: PIL.Image.Image  # the sprites, GRID_COLUMNS to a row, upscaled with nearest neighbour
    gif_path: str | None  # the denoising GIF, when asked for
    seconds: float
    summary: str


def sampler_pipeline(pipe, sampler: str):
    """`pipe` with the scheduler of `sampler` (hfdiff.samplers.with_sampler: every other component kept) and no
    console progress bar (the page has its own)."""
    other = with_sampler(pipe, sampler)
    other.set_progress_bar_config(disable=True)
    return other


class Demo:
    """The app's logic without the page: checks a Request against the model and `max_batch`, samples it through the
    pipeline and draws the results. Mistakes raise a ValueError that the page shows (gr.Error)."""

    def __init__(self, pipe, max_batch: int = MAX_BATCH):
        if max_batch < 1:
            raise ValueError(f"max_batch must be a positive number of images, got {max_batch}.")
        self.pipe = pipe
        self.max_batch = max_batch
        self.controls = model_controls(pipe)
        self.gif_folder = tempfile.mkdtemp(prefix="hfdiff-demo-")  # under the temp dir, which gradio may serve
        self._gifs_written = 0

    @property
    def num_train_timesteps(self) -> int:
        return self.pipe.scheduler.config.num_train_timesteps

    def sampler_defaults(self, sampler: str) -> dict:
        """What `sampler` runs when a setting is left out: the recipe `with_sampler` gives its pipeline
        (`sampling_defaults`: steps at most T, eta, guidance), the same as in Python and the CLI."""
        return sampler_pipeline(self.pipe, sampler).sampling_defaults

    def default_steps(self, sampler: str) -> int:
        """The sampler's own step count (hfdiff.samplers), at most T."""
        return self.sampler_defaults(sampler)["num_inference_steps"]

    def conditioning(self, request: Request) -> dict:
        """The pipeline keywords for the request's class, mixture or prompt (checked against the model)."""
        controls, num_images = self.controls, int(request.num_images)
        if (request.prompt or request.negative_prompt) and not controls.text:
            raise ValueError(
                f"A prompt was given ({request.prompt!r}), but this model is not conditioned on text; leave the prompt "
                "empty" + (" and pick a class or a mixture." if controls.class_names else ".")
            )
        if controls.text:
            if request.class_name:
                raise ValueError(
                    f"Class {request.class_name!r} was asked for, but this is a text model; write a prompt."
                )
            negative = request.negative_prompt or None
            return {"prompt": request.prompt, "negative_prompt": negative, "num_images_per_prompt": num_images}
        if not request.class_name:
            return {"batch_size": num_images}  # the null context: unconditional (or the model's unguided average)
        if controls.class_names is None:
            raise ValueError(f"Class {request.class_name!r} was asked for, but this model has no classes.")
        if request.class_name == MIXTURE:
            return {"batch_size": num_images, "context": [self.mixture_weights(request.mixture)] * num_images}
        if request.class_name not in controls.class_names:
            raise ValueError(f"Unknown class {request.class_name!r}; this model has {controls.class_names}.")
        return {"batch_size": num_images, "class_labels": controls.class_names.index(request.class_name)}

    def mixture_weights(self, weights: Sequence[float]) -> list[float]:
        expected = len(self.controls.class_names)
        weights = [float(w) for w in weights]
        if len(weights) != expected:
            raise ValueError(f"A mixture takes one weight per class ({expected}), got {len(weights)}.")
        if not any(weights):
            raise ValueError("Every mixture weight is 0; raise at least one slider, or pick a class.")
        return weights

    def check(self, request: Request) -> None:
        """Refuse what the pipeline would only notice late (or never): too many images, a bad seed or sampler."""
        num_images = request.num_images
        if num_images != int(num_images) or not 1 <= num_images <= self.max_batch:
            raise ValueError(
                f"{num_images} images were asked for; this demo makes 1 to {self.max_batch} per request (the server's "
                "--max_batch). Ask for fewer."
            )
        if request.seed != int(request.seed) or request.seed < 0:
            raise ValueError(f"The seed must be a whole number >= 0, got {request.seed}.")
        if request.sampler not in SAMPLERS:
            raise ValueError(f"Unknown sampler {request.sampler!r}; choose one of {list(SAMPLERS)}.")

    def generate(self, request: Request, progress: Callable | None = None) -> Result:
        """Sample `request` (one pipeline call) and draw the grid, and the GIF when asked for. `progress` is called
        as progress((step, total)) after each step, like gr.Progress."""
        self.check(request)
        pipe = sampler_pipeline(self.pipe, request.sampler)
        takes_eta = "eta" in inspect.signature(pipe.scheduler.step).parameters
        steps = int(request.steps) if request.steps is not None else pipe.sampling_defaults["num_inference_steps"]
        guidance = request.guidance_scale
        # A step callback turns CUDA's fast sampler (graph replays, no Python per step) off: on CUDA the page's
        # progress bar gets no steps unless the GIF needs the callback anyway.
        per_step = request.gif or (progress is not None and pipe.device.type != "cuda")
        if progress is not None and not per_step:
            progress((0, None), desc="sampling")  # a bar of unknown length
        callback = StepCallback(progress, every=max(1, steps // 25) if request.gif else None)
        start = time.perf_counter()
        images = pipe(
            **self.conditioning(request),
            guidance_scale=(None if guidance is None else float(guidance)) if self.controls.guidance else 1.0,
            num_inference_steps=steps,
            eta=(None if request.eta is None else float(request.eta)) if takes_eta else 0.0,
            generator=torch.Generator("cpu").manual_seed(int(request.seed)),  # CPU: the same images on every device
            callback_on_step_end=callback if per_step else None,
        ).images
        seconds = time.perf_counter() - start
        gif_path = save_gif(self.gif_frames(callback.samples, steps), self._gif_path()) if request.gif else None
        summary = (
            f"{len(images)} image(s) in {seconds:.2f} s: {request.sampler.upper()}, {steps} steps, seed {request.seed}, "
            f"on {pipe.device.type}"
        )
        return Result(self.grid(images), gif_path, seconds, summary)

    def scale(self) -> int:
        size = self.pipe.unet.config.sample_size
        return max(1, DISPLAY_SIZE // (size if isinstance(size, int) else max(size)))

    def grid(self, images: Sequence[PIL.Image.Image]) -> PIL.Image.Image:
        """The images in rows of 4 to GRID_COLUMNS (about square; the last row may be shorter), upscaled with
        nearest neighbour."""
        columns = min(GRID_COLUMNS, max(4, math.ceil(math.sqrt(len(images)))))
        images = upscale_images(images, self.scale())
        return labelled_rows([images[i : i + columns] for i in range(0, len(images), columns)])

    def gif_frames(self, samples: Sequence[torch.Tensor], steps: int) -> list[PIL.Image.Image]:
        """A captioned grid per recorded step (samples: (B, C, H, W) in about [-1, 1]), padded to one size."""
        every = max(1, steps // 25)
        recorded = [i for i in range(steps) if i % every == 0 or i == steps - 1]  # TrajectoryRecorder's rule
        frames = [
            titled(self.grid(postprocess_sample(sample, "pil")), f"step {i + 1}/{steps}", "bottom")
            for sample, i in zip(samples, recorded)
        ]
        size = (max(frame.width for frame in frames), max(frame.height for frame in frames))
        canvases = [PIL.Image.new("RGB", size, (255, 255, 255)) for _ in frames]  # a GIF's frames share one size
        for canvas, frame in zip(canvases, frames):
            canvas.paste(frame, (0, 0))
        return canvases

    def _gif_path(self) -> str:
        """A new file for a GIF; all but the last KEEP_GIFS are removed (gradio serves its own copies), so that a
        long-running server does not fill its disk."""
        old = sorted(Path(self.gif_folder).glob("*.gif"))  # numbered in order of writing
        for path in old[: max(0, len(old) - KEEP_GIFS + 1)]:
            path.unlink(missing_ok=True)
        self._gifs_written += 1
        return os.path.join(self.gif_folder, f"denoising-{self._gifs_written:08d}.gif")


class StepCallback:
    """A `callback_on_step_end` that reports progress and, with `every`, keeps every `every`-th sample (and the last)
    for the denoising GIF, as hfdiff.pipelines.TrajectoryRecorder does."""

    def __init__(self, progress: Callable | None, every: int | None):
        from hfdiff.pipelines import TrajectoryRecorder

        self.progress = progress
        self.recorder = TrajectoryRecorder(every) if every else None

    @property
    def samples(self) -> list[torch.Tensor]:
        return self.recorder.samples if self.recorder else []

    def __call__(self, pipe, step_index: int, timestep, callback_kwargs: dict) -> dict:
        if self.progress is not None:
            self.progress((step_index + 1, pipe.num_timesteps), desc="denoising")
        if self.recorder is not None:
            self.recorder(pipe, step_index, timestep, callback_kwargs)
        return {}


# ----------------------------------------------------------------------------------------------------------------
# The page
# ----------------------------------------------------------------------------------------------------------------


def _takes_eta(pipe, sampler: str) -> bool:
    return "eta" in inspect.signature(with_sampler(pipe, sampler).scheduler.step).parameters


def _sampler_settings(gr, demo: Demo, name: str) -> tuple:
    """The guidance, steps and eta controls set to sampler `name`'s recipe when it is picked."""
    defaults = demo.sampler_defaults(name)
    return (
        gr.update(value=defaults["guidance_scale"]),
        gr.update(value=defaults["num_inference_steps"]),
        gr.update(value=defaults["eta"], visible=_takes_eta(demo.pipe, name)),
    )


def _describe(pipe, controls: Controls) -> str:
    size = pipe.unet.config.sample_size
    if controls.text:
        what = "a text model: describe a sprite"
    elif controls.class_names:
        what = f"classes {', '.join(controls.class_names)}; mixtures blend them"
    else:
        what = "an unconditional model"
    return f"{size}x{size} sprites, {what}. {pipe.scheduler.config.num_train_timesteps} training steps."


def _conditioning_inputs(gr, controls: Controls) -> tuple:
    """(class dropdown, preset dropdown, mixture sliders, prompt, negative prompt), hidden where the model has none."""
    names = controls.class_names or []
    class_name = gr.Dropdown(
        choices=names + ([MIXTURE] if controls.mixture else []),
        value=names[0] if names else None,
        label="class",
        visible=bool(names),
    )
    with gr.Accordion("context mixture", open=False, visible=controls.mixture):
        preset = gr.Dropdown(choices=list(controls.presets), value=None, label="preset (the course's mixtures)")
        sliders = [gr.Slider(0.0, 2.0, value=0.0, step=0.05, label=name) for name in names if controls.mixture]
    prompt = gr.Textbox(label="prompt", placeholder="a green slime monster", visible=controls.text)
    negative_prompt = gr.Textbox(label="negative prompt", visible=controls.text)
    return class_name, preset, sliders, prompt, negative_prompt


def _settings_inputs(gr, demo: Demo) -> list:
    """(guidance, sampler, steps, eta, images, seed, GIF) controls; guidance hidden for unconditional models."""
    first = demo.sampler_defaults(RECOMMENDED)
    return [
        gr.Slider(
            0.0, 10.0, value=first["guidance_scale"], step=0.5, label="guidance scale", visible=demo.controls.guidance
        ),
        gr.Dropdown(choices=list(SAMPLERS), value=RECOMMENDED, label="sampler"),
        gr.Slider(1, demo.num_train_timesteps, value=first["num_inference_steps"], step=1, label="steps"),
        gr.Slider(0.0, 1.0, value=first["eta"], step=0.05, label="eta", visible=_takes_eta(demo.pipe, RECOMMENDED)),
        gr.Slider(1, demo.max_batch, value=min(8, demo.max_batch), step=1, label="images"),
        gr.Number(value=0, precision=0, minimum=0, label="seed"),
        gr.Checkbox(value=False, label="denoising GIF"),
    ]


# The "generate" endpoint's parameters before the mixture weights, in input order (names of Request's fields).
ENDPOINT_FIELDS = (
    "class_name",
    "prompt",
    "negative_prompt",
    "guidance_scale",
    "sampler",
    "steps",
    "eta",
    "num_images",
    "seed",
    "gif",
)


def mixture_parameter_names(controls: Controls) -> list[str]:
    """The endpoint's names for the mixture weights: mix_<class> (mix_spell_weapon), or mix_<index> where two class
    names would give the same name."""
    if not controls.mixture:
        return []
    names = ["mix_" + re.sub(r"\W+", "_", name).strip("_") for name in controls.class_names]
    return names if len(set(names)) == len(names) else [f"mix_{k}" for k in range(len(names))]


def _endpoint(gr, demo: Demo, inputs: Sequence) -> Callable:
    """The "generate" function: the page's values in input order (ENDPOINT_FIELDS, then one weight per class) ->
    (grid, GIF, summary). Its signature names every value, with the page's initial values as defaults, so that
    gradio_client callers name only what they change."""

    def generate(*values):
        *values, progress = values  # gradio passes its tracker where the signature has a gr.Progress default
        request = Request(**dict(zip(ENDPOINT_FIELDS, values)), mixture=values[len(ENDPOINT_FIELDS) :])
        try:
            result = demo.generate(request, progress)
        except ValueError as error:
            raise gr.Error(str(error)) from error
        return result.grid, result.gif_path, result.summary

    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    names = [*ENDPOINT_FIELDS, *mixture_parameter_names(demo.controls)]
    generate.__signature__ = inspect.Signature(
        [inspect.Parameter(name, positional, default=component.value) for name, component in zip(names, inputs)]
        + [inspect.Parameter("progress", positional, default=gr.Progress())]
    )
    return generate


def build_app(pipe, max_batch: int = MAX_BATCH, title: str = "Sprite diffusion"):
    """The Gradio Blocks app for `pipe`, queued one request at a time (the pipeline's scheduler keeps per-call
    state). Its "generate" endpoint takes (class_name, prompt, negative_prompt, guidance_scale, sampler, steps, eta,
    num_images, seed, gif, *one weight per class) and returns (grid image, GIF file or None, summary). Launch it with
    `css=PIXELATED_CSS` to keep the sprites blocky on the page."""
    gr = require_gradio()
    demo = Demo(pipe, max_batch)
    # delete_cache: gradio's copies of results older than an hour go, checked every 10 minutes (a Space runs for days).
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(600, 3600)) as app:
        gr.Markdown(f"# {title}\n{_describe(pipe, demo.controls)}")
        with gr.Row():
            with gr.Column():
                class_name, preset, sliders, prompt, negative_prompt = _conditioning_inputs(gr, demo.controls)
                settings = _settings_inputs(gr, demo)
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column():
                outputs = [
                    gr.Image(type="pil", format="png", label="samples", elem_id="samples"),
                    gr.Image(type="filepath", label="denoising", elem_id="denoising", visible=False),
                    gr.Textbox(label="time", elem_id="summary"),
                ]
        inputs = [class_name, prompt, negative_prompt, *settings, *sliders]
        button.click(_endpoint(gr, demo, inputs), inputs=inputs, outputs=outputs, api_name="generate")
        if sliders:
            preset.change(
                lambda label: [MIXTURE, *demo.controls.presets.get(label, [0.0] * len(sliders))],
                inputs=preset,
                outputs=[class_name, *sliders],
                api_visibility="private",
            )
        guidance, sampler, steps, eta, gif = settings[0], settings[1], settings[2], settings[3], settings[6]
        gif.change(lambda on: gr.update(visible=on), inputs=gif, outputs=outputs[1], api_visibility="private")
        sampler.change(
            lambda name: _sampler_settings(gr, demo, name),
            inputs=sampler,
            outputs=[guidance, steps, eta],
            api_visibility="private",
        )
    return app.queue(default_concurrency_limit=1)


# ----------------------------------------------------------------------------------------------------------------
# Serving, and the app a Space runs
# ----------------------------------------------------------------------------------------------------------------


def check_port_free(host: str, port: int) -> None:
    """Refuse a port another server holds, before the model is loaded (gradio would fail only after)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no conflict
        try:
            probe.bind((host, port))
        except OSError as error:
            raise ValueError(
                f"Cannot serve on {host}:{port} ({error.strerror}): another program holds that port, or the address "
                f"is not this machine's; pass another --port (e.g. --port {port + 1}) or --host."
            ) from None


def serve(
    model: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 7860,
    max_batch: int = MAX_BATCH,
    device: str | None = None,
    block: bool = True,
):
    """Load `model` and serve its app at http://host:port/ (until interrupted, or in the background with
    block=False). Returns the app (`app.close()` stops it)."""
    require_gradio()
    if max_batch < 1:
        raise ValueError(f"--max_batch must be a positive number of images, got {max_batch}.")
    check_port_free(host, port)
    pipe = load_pipeline(model, device)
    app = build_app(pipe, max_batch, title=f"Sprite diffusion: {Path(str(model)).name}")
    app.launch(
        server_name=host,
        server_port=port,
        css=PIXELATED_CSS,
        show_error=True,
        prevent_thread_lock=not block,
        quiet=not block,
    )
    return app
