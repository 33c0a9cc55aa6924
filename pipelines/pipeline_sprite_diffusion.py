"""SpriteDiffusionPipeline: sample a ContextUNet2DModel with DDPM, DDIM or any diffusers scheduler.

This module imports only torch, numpy and diffusers, so it can travel next to a saved pipeline as stand-alone code
(loadable with `DiffusionPipeline.from_pretrained(..., trust_remote_code=True)` where hfdiff is not installed).
"""

from __future__ import annotations

import glob
import importlib.util
import inspect
import json
import os
import shutil
import tempfile
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler, DiffusionPipeline, ImagePipelineOutput
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.torch_utils import randn_tensor

ClassLabel = int | str
_DOWNLOAD_KEYS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision")
# Weight formats loaded through pickle, which can run code: never loaded, named in an error instead.
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# Libraries a diffusers-only user has: components from these are referenced by name, everything else travels as code.
_INSTALLED_LIBRARIES = ("diffusers", "transformers")


class SpriteDiffusionPipeline(DiffusionPipeline):
    r"""
    Generate images with a context-conditioned UNet (one-hot classes, mixtures, or any context vector), classifier-free
    guidance, and DDPM / DDIM / any diffusers scheduler.

    Parameters:
        unet ([`ContextUNet2DModel`]): predicts the denoising target from (x_t, t, c). Its config's `context_dim`
            (None for unconditional models) and `class_names` decide which contexts the pipeline accepts.
        scheduler ([`SchedulerMixin`]): the sampler, e.g. `SpriteDDPMScheduler`, `SpriteDDIMScheduler`, or any
            diffusers scheduler made with `from_config(pipe.scheduler.config)`.

    Example:
    ```py
    >>> from hfdiff import SpriteDiffusionPipeline, SpriteDDIMScheduler
    >>> pipe = SpriteDiffusionPipeline.from_pretrained("sprite-model")
    >>> pipe(batch_size=4, class_labels="hero").images  # four heroes, full DDPM
    >>> pipe(context=[[1.0, 0, 0.6, 0, 0]]).images  # a mixture: hero + 0.6 food
    >>> pipe.scheduler = SpriteDDIMScheduler.from_config(pipe.scheduler.config)
    >>> pipe(batch_size=5, class_labels=[0, 1, 2, 3, 4], num_inference_steps=25).images  # fast DDIM
    ```
    """

    model_cpu_offload_seq = "unet"
    _callback_tensor_inputs = ["latents"]

    def __init__(self, unet, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> "SpriteDiffusionPipeline":
        """Load a saved pipeline from a local folder or a Hub repo id.

        Where hfdiff is installed, each component is built from its installed class (hfdiff's, or diffusers' for a
        swapped-in diffusers scheduler): code files exported next to the weights for diffusers-only users are never
        executed here, so no trust_remote_code is needed. Weights load from safetensors only. Components may also be
        passed in (`unet=...`, `scheduler=...`); `torch_dtype` applies to the UNet; Hub options (`revision`, `token`,
        `cache_dir`, `local_files_only`, `force_download`, `proxies`) are passed to the download.
        """
        if importlib.util.find_spec("hfdiff") is None:  # exported code running without hfdiff: diffusers' loading
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        import diffusers
        from huggingface_hub import snapshot_download

        hfdiff = importlib.import_module("hfdiff")

        download_kwargs = {key: kwargs.pop(key) for key in _DOWNLOAD_KEYS if key in kwargs}
        torch_dtype = kwargs.pop("torch_dtype", None)
        components = {name: kwargs.pop(name) for name in ("unet", "scheduler") if name in kwargs}
        if kwargs:
            raise TypeError(f"Unexpected arguments for SpriteDiffusionPipeline.from_pretrained: {sorted(kwargs)}.")

        folder = str(pretrained_model_name_or_path)
        if not os.path.isdir(folder):
            # A plain file download: nothing in the repo is imported or unpickled by fetching it.
            folder = snapshot_download(folder, **download_kwargs)
        index_path = os.path.join(folder, "model_index.json")
        if not os.path.isfile(index_path):
            if any(os.path.isdir(os.path.join(folder, name)) for name in ("unet", "scheduler")):
                raise FileNotFoundError(
                    f"{index_path} does not exist, but {folder} has pipeline components: a save that was cut short "
                    "(model_index.json is written last). Save the pipeline again with pipe.save_pretrained(path), "
                    "or rerun the training with --resume_from_checkpoint latest, which saves it at the end."
                )
            raise FileNotFoundError(
                f"{index_path} does not exist: {pretrained_model_name_or_path} is not a saved pipeline folder "
                "(save one with pipe.save_pretrained(path))."
            )
        index = _read_json(index_path)
        for name in ("unet", "scheduler"):
            if name in components:
                continue
            entry = index.get(name)
            if not (isinstance(entry, list) and len(entry) == 2):
                raise ValueError(f"{index_path} has no [library, class] entry for {name!r}; the folder is incomplete.")
            component_cls = getattr(hfdiff, entry[1], None) or getattr(diffusers, entry[1], None)
            if component_cls is None:
                raise ValueError(
                    f"{index_path} names {entry[1]!r} for {name!r}, which neither hfdiff nor diffusers defines; "
                    "upgrade hfdiff/diffusers or pass the component in (e.g. scheduler=...)."
                )
            component_folder = Path(folder) / name
            if not component_folder.is_dir():
                raise FileNotFoundError(
                    f"{index_path} names a {name!r} component but {component_folder} does not exist; the folder is "
                    "incomplete: save it again with pipe.save_pretrained(path)."
                )
            _check_config(component_cls, component_folder, name)
            if name == "unet":
                _check_weights(component_folder)
                components[name] = component_cls.from_pretrained(
                    folder, subfolder=name, torch_dtype=torch_dtype, use_safetensors=True
                )
            else:
                components[name] = component_cls.from_pretrained(folder, subfolder=name)
        return cls(**components)

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        safe_serialization: bool = True,
        variant: str | None = None,
        model_card=None,
        **kwargs,
    ):
        """Save weights (safetensors), configs, a model card, and the code of every component that diffusers does not
        ship, so that the folder loads both ways:

            SpriteDiffusionPipeline.from_pretrained(folder)                            # where hfdiff is installed
            DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)          # with diffusers alone

        The folder is written beside the target first and then moved in: the old model_index.json is removed first
        and the new one moved in last, so a save killed at any moment leaves the previous complete pipeline or no
        pipeline (no model_index.json, which `from_pretrained` reports), never a mix of old and new components. A
        save that fails while writing (a full disk) raises an OSError naming the folder and leaves it unchanged.
        Other files already in `save_directory` (checkpoints, logs, samples) are left alone.

        Args:
            model_card: a `huggingface_hub.ModelCard` to write as README.md; None builds one from the pipeline
                (`hfdiff.hub.build_model_card`) when hfdiff is installed.
        """
        if not safe_serialization:
            raise ValueError(
                "SpriteDiffusionPipeline saves safetensors only: pickled weights can run code when loaded. "
                "Leave safe_serialization=True."
            )
        if kwargs.pop("push_to_hub", False):
            raise ValueError("Use pipe.push_to_hub(repo_id) to upload; save_pretrained only writes the folder.")
        target = Path(save_directory).absolute()
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OSError(
                f"Cannot save the pipeline to {target}: the folder cannot be created ({error}). Choose a folder you "
                "can write to."
            ) from error
        prefix = f".{target.name}.saving-"
        # Staging folders of saves that were killed (two saves into one folder at once are not supported anyway).
        for stale in target.parent.glob(glob.escape(prefix) + "*"):
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
        try:
            try:
                super().save_pretrained(staging, safe_serialization=True, variant=variant)
                self.export_code(staging)
                if model_card is None and importlib.util.find_spec("hfdiff") is not None:
                    model_card = importlib.import_module("hfdiff.hub").build_model_card(self)
                if model_card is not None:
                    model_card.save(staging / "README.md")
            except Exception as error:  # OSError, or safetensors' SafetensorError, for the same full disk
                try:
                    free = f"{shutil.disk_usage(target.parent).free / 2**20:,.0f} MiB free there"
                except OSError:
                    free = "free space unknown"
                raise OSError(
                    f"Could not save the pipeline to {target} ({type(error).__name__}: {error}); {free}. A full disk "
                    "(or a file size limit) is the usual cause: free space, or save to another folder. Nothing in "
                    "the folder was changed."
                ) from error
            _move_entries(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def push_to_hub(
        self,
        repo_id: str,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        create_pr: bool = False,
        model_card=None,
        extra_files: Sequence[str | os.PathLike] = (),
    ) -> str:
        """Save the pipeline (as `save_pretrained` does: safetensors, exported code, model card) into a temporary
        folder and upload exactly that folder to the Hub repo `repo_id` (created if needed) with huggingface_hub's
        create_repo + upload_folder. `extra_files` (e.g. a samples.png the model card shows) are uploaded beside it.
        Returns the URL of the commit."""
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder, model_card=model_card)
            for path in map(Path, extra_files):
                shutil.copyfile(path, Path(folder) / path.name)
            repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
            commit = api.upload_folder(
                repo_id=repo_id,
                folder_path=folder,
                commit_message=commit_message or f"Upload {type(self).__name__}",
                create_pr=create_pr,
            )
        return str(getattr(commit, "commit_url", commit))

    def export_code(self, folder: str | os.PathLike) -> None:
        """Copy the source of the pipeline and of every non-diffusers component into a saved folder, in the layout
        of diffusers' custom-code loader, and point model_index.json at those files:
        `_class_name: [pipeline_file, class]` at the top, `[module_file, class]` for unet/ and scheduler/."""
        folder = Path(folder)
        index_path = folder / "model_index.json"
        index = json.loads(index_path.read_text(encoding="utf-8"))
        pipeline_entry = _copy_class_source(type(self), folder)
        if pipeline_entry is not None:
            index["_class_name"] = pipeline_entry
        for name in ("unet", "scheduler"):
            entry = _copy_class_source(type(getattr(self, name)), folder / name)
            if entry is not None:
                index[name] = entry
        index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    @property
    def class_names(self) -> list[str] | None:
        """Names of the one-hot context entries, in order (None when the model has no named classes)."""
        names = getattr(self.unet.config, "class_names", None)
        return list(names) if names is not None else None

    def encode_class_labels(self, class_labels: ClassLabel | Sequence[ClassLabel], batch_size: int) -> torch.Tensor:
        """Class names or indices -> one-hot contexts (B, context_dim). One label is repeated for the whole batch."""
        context_dim = self.unet.config.context_dim
        if context_dim is None:
            raise ValueError(
                "class_labels were given but this model is unconditional (context_dim=None); drop class_labels."
            )
        labels = [class_labels] if isinstance(class_labels, (int, str)) else list(class_labels)
        if len(labels) == 1:
            labels = labels * batch_size
        if len(labels) != batch_size:
            raise ValueError(
                f"Got {len(labels)} class_labels for batch_size={batch_size}; give one label per image or one for all."
            )
        names = self.class_names
        indices = []
        for label in labels:
            if isinstance(label, str):
                if names is None or label not in names:
                    known = names if names is not None else f"indices 0..{context_dim - 1} (this model has no names)"
                    raise ValueError(f"Unknown class name {label!r}; this model knows {known}.")
                indices.append(names.index(label))
            elif isinstance(label, (int, np.integer)) and 0 <= label < context_dim:
                indices.append(int(label))
            else:
                raise ValueError(
                    f"Class label {label!r} is out of range: use an index in 0..{context_dim - 1} or a class name"
                    + (f" from {names}." if names else ".")
                )
        return torch.nn.functional.one_hot(torch.tensor(indices), context_dim).float()

    def check_inputs(self, batch_size, class_labels, context, guidance_scale, num_inference_steps, eta, extra_noise):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        if class_labels is not None and context is not None:
            raise ValueError("Pass either class_labels or context, not both (class labels become one-hot contexts).")
        conditional = self.unet.config.context_dim is not None
        if not conditional and guidance_scale != 1.0:
            raise ValueError(
                f"guidance_scale={guidance_scale} needs a conditional model, but this one is unconditional "
                "(context_dim=None); use guidance_scale=1.0."
            )
        if guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0 (1.0 = plain conditional sampling), got {guidance_scale}.")
        num_train_timesteps = self.scheduler.config.num_train_timesteps
        if num_inference_steps is not None and not 1 <= num_inference_steps <= num_train_timesteps:
            raise ValueError(
                f"num_inference_steps={num_inference_steps} is outside 1..{num_train_timesteps} (the scheduler was "
                f"trained with {num_train_timesteps} steps); choose a value in that range."
            )
        step_params = inspect.signature(self.scheduler.step).parameters
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1] (0 = deterministic DDIM, 1 = DDPM-like), got {eta}.")
        if eta != 0.0 and "eta" not in step_params:
            raise ValueError(
                f"eta={eta} was given but {type(self.scheduler).__name__} takes no eta; use a DDIM scheduler "
                "(SpriteDDIMScheduler.from_config(pipe.scheduler.config)) or leave eta=0."
            )
        if not extra_noise and "extra_noise" not in step_params:
            raise ValueError(
                f"extra_noise=False needs SpriteDDPMScheduler, but the pipeline has {type(self.scheduler).__name__}; "
                "swap it in with SpriteDDPMScheduler.from_config(pipe.scheduler.config)."
            )

    def enable_fast_sampling(self, enabled: bool = True, **options) -> None:
        """Turn hfdiff's CUDA-graph sampler on (the default where hfdiff is installed) or off.

        On: calls on CUDA run their denoising loop as replays of one recorded step through
        `hfdiff.fast_sampling.FastSampler(self, **options)` (bf16 by default, so images match the step-by-step loop
        to bf16 rounding), except calls it cannot run exactly (see `FastSampler.fallback_reason`). Off: always the
        step-by-step loop, in the UNet's own dtype.
        """
        self._fast_sampling_options = dict(options) if enabled else None
        self._fast_sampler = None

    def _fast_sampler_for(self, device, generator, callback_on_step_end):
        """The FastSampler to run this call, or None: turned off, hfdiff not installed (the pipeline travelling as
        code next to a saved model), or an option it declines (its fallback_reason says which)."""
        options = getattr(self, "_fast_sampling_options", {})
        if options is None or importlib.util.find_spec("hfdiff") is None:
            return None
        if getattr(self, "_fast_sampler", None) is None:
            # A weak proxy: a sampler holding the pipeline that holds it would be a reference cycle, kept alive (with
            # its CUDA graphs, their memory pools and a UNet copy) until Python's cycle collector happens to run.
            fast_sampling = importlib.import_module("hfdiff.fast_sampling")
            self._fast_sampler = fast_sampling.FastSampler(weakref.proxy(self), **options)
        reason = self._fast_sampler.fallback_reason(
            device=device, generator=generator, callback_on_step_end=callback_on_step_end
        )
        return self._fast_sampler if reason is None else None

    def prepare_context(self, class_labels, context, batch_size, device, dtype) -> torch.Tensor | None:
        """The context for each image (B, context_dim), the null context (zeros) when neither input is given, or
        None for an unconditional model."""
        if class_labels is not None:
            context = self.encode_class_labels(class_labels, batch_size)
        return self.unet.prepare_context(context, batch_size, device, dtype)

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        class_labels: ClassLabel | Sequence[ClassLabel] | None = None,
        context: torch.Tensor | Sequence[Sequence[float]] | None = None,
        guidance_scale: float = 1.0,
        num_inference_steps: int | None = None,
        eta: float = 0.0,
        extra_noise: bool = True,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[[DiffusionPipeline, int, int, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> ImagePipelineOutput | tuple:
        r"""
        Generate images.

        Args:
            batch_size: number of images B.
            class_labels: class names ("hero") or indices, one per image or one for all; become one-hot contexts.
            context: (B, context_dim) or (context_dim,) context vectors, as a tensor or nested lists; real-valued
                mixtures such as hero 1.0 + food 0.6 are fine. Neither class_labels nor context: the null context.
            guidance_scale: w of classifier-free guidance, eps_hat = eps(x,t,null) + w (eps(x,t,c) - eps(x,t,null)).
                1.0 is plain conditional sampling (one forward pass); any other value batches the conditional and
                the null pass into one forward pass of 2B images.
            num_inference_steps: denoising steps; None = every training step for DDPM schedulers, 50 for others.
            eta: DDIM's noise scale (0 deterministic, 1 DDPM-like); only for schedulers whose step takes eta.
            extra_noise: False skips the sigma_t z term of every DDPM step (needs SpriteDDPMScheduler), the
                classic demonstration that samples collapse to blurry means without it.
            generator: torch.Generator (or one per image) for the initial noise and every step's noise.
            latents: (B, C, H, W) starting noise x_T to use instead of drawing it from `generator` (e.g. to compare
                samplers from the same start); scaled by the scheduler's init_noise_sigma like drawn noise.
            output_type: "pil" (list of PIL images), "np" ((B, H, W, C) float in [0, 1]) or "pt"
                ((B, C, H, W) float tensor in [0, 1]).
            return_dict: return an `ImagePipelineOutput` rather than a tuple.
            callback_on_step_end: called after each step as `callback(pipe, i, t, callback_kwargs)` with
                `callback_kwargs["latents"]` the current x_{t-1} (B, C, H, W) in about [-1, 1]; it may return a dict
                whose "latents" replaces the current sample. `TrajectoryRecorder` is a ready one for denoising GIFs.
            callback_on_step_end_tensor_inputs: names passed in `callback_kwargs`; only "latents" is available.

        Returns:
            `ImagePipelineOutput` with `images` in the chosen output_type.
        """
        self.check_inputs(batch_size, class_labels, context, guidance_scale, num_inference_steps, eta, extra_noise)
        for name in callback_on_step_end_tensor_inputs:
            if name not in self._callback_tensor_inputs:
                raise ValueError(
                    f"callback_on_step_end_tensor_inputs has {name!r}; choose from {self._callback_tensor_inputs}."
                )
        device = self._execution_device
        dtype = self.unet.dtype

        # 1. context c for each image, and the null context for the unconditional half of guidance
        context = self.prepare_context(class_labels, context, batch_size, device, dtype)  # (B, D) or None
        do_guidance = context is not None and guidance_scale != 1.0
        if do_guidance:
            context = torch.cat([context, torch.zeros_like(context)])  # (2B, D): conditional, then null

        # 2. timesteps
        if num_inference_steps is None:
            num_train_timesteps = self.scheduler.config.num_train_timesteps
            num_inference_steps = (
                num_train_timesteps if isinstance(self.scheduler, DDPMScheduler) else min(50, num_train_timesteps)
            )
        self.scheduler.set_timesteps(num_inference_steps, device=device)

        # 3. x_T ~ N(0, I), scaled for schedulers that start from a larger sigma
        sample_size = self.unet.config.sample_size
        height, width = (sample_size, sample_size) if isinstance(sample_size, int) else sample_size
        shape = (batch_size, self.unet.config.in_channels, height, width)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents have shape {tuple(latents.shape)} but batch_size and the model need {shape}.")
        latents = latents.to(device=device, dtype=dtype) * self.scheduler.init_noise_sigma

        step_params = inspect.signature(self.scheduler.step).parameters
        step_kwargs = {}
        if "generator" in step_params:
            step_kwargs["generator"] = generator
        if "eta" in step_params:
            step_kwargs["eta"] = eta
        if "extra_noise" in step_params:
            step_kwargs["extra_noise"] = extra_noise

        # 4. denoising loop: x_T -> x_0. On CUDA, hfdiff's FastSampler replays one recorded step (the same math in
        #    bf16; the same noise stream for a CUDA generator) unless the call needs this step-by-step loop.
        fast_sampler = self._fast_sampler_for(device, generator, callback_on_step_end)
        if fast_sampler is not None:
            latents = fast_sampler.sample(
                latents, context, guidance_scale=guidance_scale, eta=eta, extra_noise=extra_noise, generator=generator
            )
        else:
            for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
                model_input = torch.cat([latents, latents]) if do_guidance else latents
                model_input = self.scheduler.scale_model_input(model_input, t)
                model_output = self.unet(model_input, t, context=context).sample
                if do_guidance:
                    # classifier-free guidance (Ho & Salimans 2022, eq. 6)
                    cond, null = model_output.chunk(2)
                    model_output = null + guidance_scale * (cond - null)
                latents = self.scheduler.step(model_output, t, latents, **step_kwargs).prev_sample

                if callback_on_step_end is not None:
                    available = {"latents": latents}
                    callback_kwargs = {name: available[name] for name in callback_on_step_end_tensor_inputs}
                    callback_outputs = callback_on_step_end(self, i, t, callback_kwargs) or {}
                    latents = callback_outputs.get("latents", latents)

        # 5. [-1, 1] -> [0, 1] images
        images = self.postprocess(latents, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)

    def postprocess(self, sample: torch.Tensor, output_type: str = "pil"):
        """sample: (B, C, H, W) in about [-1, 1] -> images in [0, 1]; see `postprocess_sample`."""
        return postprocess_sample(sample, output_type)


class TrajectoryRecorder:
    """A `callback_on_step_end` that keeps the intermediate samples of the trajectory, e.g. for a denoising GIF.

    ```py
    >>> recorder = TrajectoryRecorder(every=20)
    >>> pipe(batch_size=4, class_labels="hero", callback_on_step_end=recorder)
    >>> frames = recorder.frames()  # list of PIL grids, x_T ... x_0
    >>> diffusers.utils.export_to_gif(frames, "denoising.gif")
    ```
    """

    def __init__(self, every: int = 1):
        if every < 1:
            raise ValueError(f"every must be a positive number of steps, got {every}.")
        self.every = every
        self.samples: list[torch.Tensor] = []  # each (B, C, H, W) in about [-1, 1], on the CPU

    def __call__(self, pipe, step_index: int, timestep, callback_kwargs: dict) -> dict:
        last = step_index == pipe.scheduler.timesteps.shape[0] - 1
        if step_index % self.every == 0 or last:
            self.samples.append(callback_kwargs["latents"].detach().float().cpu())
        return {}

    def frames(self, rows: int = 1, scale: int = 4):
        """One PIL grid per recorded step (images side by side in `rows` rows), upscaled `scale` times."""
        from diffusers.utils import make_image_grid

        frames = []
        for sample in self.samples:
            images = postprocess_sample(sample, "pil")
            images = [image.resize((image.width * scale, image.height * scale), resample=0) for image in images]
            frames.append(make_image_grid(images, rows=rows, cols=len(images) // rows))
        return frames


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


def _copy_class_source(cls: type, folder: Path) -> list[str] | None:
    """Copy the module defining `cls` (and the sibling modules it imports relatively) into `folder`; returns the
    model_index.json entry [module_file_stem, class_name], or None for classes diffusers users already have."""
    if cls.__module__.split(".")[0] in _INSTALLED_LIBRARIES:
        return None
    from diffusers.utils.dynamic_modules_utils import get_relative_import_files

    source = Path(inspect.getsourcefile(cls))
    folder.mkdir(parents=True, exist_ok=True)
    for path in [source, *map(Path, get_relative_import_files(source))]:
        shutil.copyfile(path, folder / path.name)
    return [source.stem, cls.__name__]


# Config entries without which a component would be built from defaults that differ from the saved model, silently
# (a missing num_train_timesteps would sample a 20-step model with a 500-step schedule); checked where the class
# takes them. Others may be missing: their defaults are what older versions of the classes did.
_REQUIRED_CONFIG = {
    "unet": (
        "architecture",
        ("sample_size", "in_channels", "out_channels", "block_out_channels", "down_block_types", "up_block_types")
        + ("layers_per_block", "context_dim"),
    ),
    "scheduler": (
        "noise schedule",
        ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type", "variance_type"),
    ),
}


def _read_json(path: str | os.PathLike) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(
            f"{path} is not valid JSON ({error}): the file is damaged. Save the pipeline again with "
            "pipe.save_pretrained(path), or download it again."
        ) from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} holds {type(value).__name__}, not a JSON object; save the pipeline again.")
    return value


def _check_config(component_cls: type, component_folder: Path, name: str) -> None:
    """The component's config file exists, is JSON, and has every entry of _REQUIRED_CONFIG that its class takes."""
    config_path = component_folder / component_cls.config_name
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{config_path} does not exist: the {name!r} component of {component_folder.parent} is incomplete. Save "
            "the pipeline again with pipe.save_pretrained(path)."
        )
    config = _read_json(config_path)
    what, keys = _REQUIRED_CONFIG[name]
    takes = inspect.signature(component_cls.__init__).parameters
    missing = [key for key in keys if key in takes and key not in config]
    if missing:
        them = "it" if len(missing) == 1 else "them"
        raise ValueError(
            f"{config_path} lacks {', '.join(missing)}: without {them}, {component_cls.__name__}'s defaults would give "
            f"a different {what} from the saved one. Add {them} with the values the model was trained with, or save "
            "the pipeline again with pipe.save_pretrained(path)."
        )


def _check_weights(component_folder: Path) -> None:
    """Refuse pickled weights, and safetensors files that are truncated or corrupted, with an error naming the file."""
    from safetensors import SafetensorError, safe_open

    safetensors_files = sorted(component_folder.glob("*.safetensors"))
    if not safetensors_files:
        pickled = sorted(path for path in component_folder.iterdir() if path.suffix in _PICKLE_SUFFIXES)
        if pickled:
            raise ValueError(
                f"{pickled[0]} holds pickled weights, which hfdiff never loads (unpickling can run arbitrary code). "
                "If you trust the file, convert it once with diffusers: "
                f"`ContextUNet2DModel.from_pretrained({str(component_folder)!r}, use_safetensors=False)"
                f".save_pretrained({str(component_folder)!r})` writes diffusion_pytorch_model.safetensors."
            )
        raise FileNotFoundError(
            f"{component_folder} has no weights: expected diffusion_pytorch_model.safetensors. Save the pipeline "
            "again with pipe.save_pretrained(path)."
        )
    for path in safetensors_files:
        try:
            with safe_open(str(path), framework="pt") as weights:
                weights.keys()
        except (SafetensorError, OSError) as error:
            raise ValueError(
                f"{path} is not a readable safetensors file ({error}): it is truncated or corrupted. Download or "
                "save the pipeline again."
            ) from error


def retired_path(path: str | os.PathLike) -> Path:
    """Where `replace_path` (and checkpoint pruning) parks an entry before deleting it: `.<name>.old` beside it."""
    path = Path(path)
    return path.parent / f".{path.name}.old"


def replace_path(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Move the file or folder `src` to `dst`, replacing what is there. Each step is one rename(2): a file is
    replaced atomically; a folder (which rename cannot replace while it is non-empty) is first renamed aside to
    `retired_path(dst)`, and deleted only after the new one is in place, so `dst` is always the old or the new
    entry, or absent for the instant between the two renames. The one folder swap of hfdiff: pipeline saves and
    training checkpoints both go through it."""
    src, dst = Path(src), Path(dst)
    if src.is_dir() and dst.exists():
        retired = retired_path(dst)
        shutil.rmtree(retired, ignore_errors=True)
        os.replace(dst, retired)
        os.replace(src, dst)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(src, dst)


def _move_entries(staging: Path, target: Path) -> None:
    """Move every entry of `staging` into `target` with `replace_path`. The old model_index.json is deleted first and
    the new one moved in last (each atomic), so whenever `target` has an index, every component it names is the one
    saved with it: the previous pipeline until the first deletion, the new one after the last move, no pipeline in
    between."""
    index = target / "model_index.json"
    if index.exists():
        index.unlink()
    for entry in sorted(staging.iterdir(), key=lambda path: path.name == "model_index.json"):
        replace_path(entry, target / entry.name)
