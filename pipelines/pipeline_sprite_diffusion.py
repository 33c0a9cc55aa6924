"""SpriteDiffusionPipeline: sample a ContextUNet2DModel with DDPM, DDIM or any diffusers scheduler.

This module imports only torch, numpy and diffusers, so it can travel next to a saved pipeline as stand-alone code
(loadable with `DiffusionPipeline.from_pretrained(..., trust_remote_code=True)` where hfdiff is not installed).
"""

from __future__ import annotations

import errno
import glob
import importlib.util
import inspect
import json
import math
import os
import shutil
import tempfile
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler, DiffusionPipeline, ImagePipelineOutput
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.torch_utils import randn_tensor

from .text_encoding import check_text_encoder_config, encode_text, text_embedding_dim

ClassLabel = int | str
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
        text_encoder ([`~transformers.PreTrainedModel`], *optional*): a frozen transformers text encoder whose one
            vector per prompt (see `text_encoding.encode_text`) is the context c; its width is the UNet's
            `context_dim`. None for models conditioned on classes or context vectors.
        tokenizer ([`~transformers.PreTrainedTokenizerBase`], *optional*): the text encoder's tokenizer.

    Example:
    ```py
    >>> from hfdiff import SpriteDiffusionPipeline, SpriteDDIMScheduler
    >>> pipe = SpriteDiffusionPipeline.from_pretrained("sprite-model")
    >>> pipe(batch_size=4, class_labels="hero").images  # four heroes, full DDPM
    >>> pipe(context=[[1.0, 0, 0.6, 0, 0]]).images  # a mixture: hero + 0.6 food
    >>> pipe.scheduler = SpriteDDIMScheduler.from_config(pipe.scheduler.config)
    >>> pipe(batch_size=5, class_labels=[0, 1, 2, 3, 4], num_inference_steps=25).images  # fast DDIM
    >>> text_pipe = SpriteDiffusionPipeline.from_pretrained("sprite-text-model")  # trained with --conditioning text
    >>> text_pipe(prompt="a green slime monster", num_images_per_prompt=4, guidance_scale=3.0).images
    ```
    """

    model_cpu_offload_seq = "text_encoder->unet"
    _optional_components = ["text_encoder", "tokenizer"]
    _callback_tensor_inputs = ["latents"]

    def __init__(self, unet, scheduler, text_encoder=None, tokenizer=None):
        super().__init__()
        if (text_encoder is None) != (tokenizer is None):
            raise ValueError(
                "Pass text_encoder and tokenizer together (a text model needs both), or neither for a model "
                "conditioned on classes or context vectors."
            )
        if text_encoder is not None and text_embedding_dim(text_encoder) != unet.config.context_dim:
            raise ValueError(
                f"The text encoder gives vectors of length {text_embedding_dim(text_encoder)} but the UNet takes "
                f"context_dim={unet.config.context_dim}: build the UNet with context_dim equal to the encoder's width "
                "(train_conditional.py --conditioning text does), or pass the encoder it was trained with."
            )
        self.register_modules(unet=unet, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> "SpriteDiffusionPipeline":
        """Load a saved pipeline from a local folder or a Hub repo id, with `DiffusionPipeline.from_pretrained`'s
        keywords:

        - Hub download: `revision`, `token`, `cache_dir`, `local_files_only`, `force_download`, `proxies`. Only the
          pipeline's files are fetched (model_index.json, then each component's configs and the weights of the
          requested variant), never the rest of the repo.
        - `variant` ("fp16", ...): load `*.{variant}.safetensors` weights, as written by
          `save_pretrained(..., variant=...)`.
        - `torch_dtype`: a dtype for every model component, or a dict {component name or "default": dtype}.
        - `use_safetensors`: None or True; weights load from safetensors only, so False is refused.
        - `low_cpu_mem_usage`: passed to each model's `from_pretrained`.
        - `trust_remote_code`: accepted and unused here: where hfdiff is installed, each component is built from its
          installed class (hfdiff's, diffusers' or transformers'), and code files exported next to the weights for
          diffusers-only users are never executed.
        - components passed in (`unet=...`, `scheduler=...`) are used instead of loading them.

        Keywords of diffusers' loader that do not apply to this pipeline (`custom_pipeline`, `device_map`,
        `quantization_config`, ...) raise a ValueError that says what to do instead.
        """
        if importlib.util.find_spec("hfdiff") is None:  # exported code running without hfdiff: diffusers' loading
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        expected = cls._component_names()
        passed = {name: kwargs.pop(name) for name in expected if name in kwargs}
        options = _LoadOptions.from_kwargs(kwargs)
        folder = _pipeline_folder(pretrained_model_name_or_path, options)
        index = _read_json(folder / "model_index.json")
        components = {
            name: passed[name]
            if name in passed
            else _load_component(folder, name, index, options, optional=name in cls._optional_components)
            for name in expected
        }
        return cls(**components)

    @classmethod
    def _component_names(cls) -> list[str]:
        """The pipeline's component slots, read from `__init__` as diffusers does (`_get_signature_keys`)."""
        return [name for name in inspect.signature(cls.__init__).parameters if name != "self"]

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        safe_serialization: bool = True,
        variant: str | None = None,
        max_shard_size: int | str | None = None,
        push_to_hub: bool = False,
        model_card=None,
        demo_app: bool = False,
        **kwargs,
    ):
        """Save weights (safetensors), configs, a model card, and the code of every component that diffusers does not
        ship, so that the folder loads both ways:

            SpriteDiffusionPipeline.from_pretrained(folder)                            # where hfdiff is installed
            DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)          # with diffusers alone

        The keywords are `DiffusionPipeline.save_pretrained`'s: `variant="fp16"` writes
        `diffusion_pytorch_model.fp16.safetensors` (weights of other variants already in the folder are kept, as
        diffusers keeps them, when the component's config is unchanged); `max_shard_size` shards large weights;
        `push_to_hub=True` then uploads the folder's pipeline files (see `push_to_hub`) with `repo_id` (default:
        the folder's name), `commit_message`, `private`, `token` and `create_pr` from `kwargs`.

        The pipeline is written into a hidden staging folder inside the target (`.saving-<random>/`, on the target's
        filesystem whatever its parent's is: a symlink or mount to tmpfs or a volume) and then moved in by renames
        that cannot cross a filesystem: the old model_index.json is removed first and the new one moved in last, so a
        save killed at any moment leaves the previous complete pipeline or no pipeline (no model_index.json, which
        `from_pretrained` reports), never a mix of old and new components. The swap starts only once everything is
        written. A save that fails raises an OSError naming the folder and the cause (full disk or file size limit,
        permission denied, read-only filesystem, a component folder on another filesystem, or the error itself) and
        says whether the folder was changed. Other files in `save_directory` (checkpoints, logs, samples) and its
        parent directory are left alone.

        Args:
            model_card: a `huggingface_hub.ModelCard` to write as README.md; None builds one from the pipeline
                (`hfdiff.hub.build_model_card`) when hfdiff is installed.
            demo_app: also write `app.py` and `requirements.txt` (`hfdiff.demo.write_app`), a Gradio app for this
                folder, so that it runs as a Hub Space as it is; the built model card says so. Needs hfdiff.
        """
        if not safe_serialization:
            raise ValueError(
                "SpriteDiffusionPipeline saves safetensors only: pickled weights can run code when loaded. "
                "Leave safe_serialization=True."
            )
        upload = _pop_upload_kwargs(kwargs, default_repo_id=Path(save_directory).absolute().name)
        if kwargs:
            raise TypeError(f"Unexpected arguments for save_pretrained: {sorted(kwargs)}.")
        if push_to_hub:
            _check_repo_id(upload["repo_id"])  # before writing anything
        if demo_app and importlib.util.find_spec("hfdiff") is None:
            raise ValueError(
                "demo_app=True writes hfdiff's Gradio app, which needs hfdiff: `pip install hfdiff[demo]`."
            )
        target = Path(save_directory).absolute()
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OSError(
                f"Cannot save the pipeline to {target}: the folder cannot be created ({error}). Choose a folder you "
                "can write to."
            ) from error
        try:
            staging = _new_staging_folder(target)
        except OSError as error:
            raise _save_error(target, error, "Nothing in the folder was changed") from error
        try:
            try:
                self._write_to(staging, target, variant, max_shard_size, model_card, demo_app)
                _check_swappable(staging, target)
            except Exception as error:  # OSError, or safetensors' SafetensorError, for the same full disk
                raise _save_error(target, error, "Nothing in the folder was changed") from error
            try:
                _move_entries(staging, target)
            except OSError as error:
                raise _save_error(
                    target,
                    error,
                    "The save stopped part-way: the folder has no model_index.json now (from_pretrained says so), "
                    "so no mix of old and new components can load. Save again once the cause is fixed",
                ) from error
            if not demo_app:
                _drop_stale_app(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if push_to_hub:
            upload_pipeline_folder(target, **upload)

    def _write_to(self, staging: Path, target: Path, variant, max_shard_size, model_card, demo_app=False) -> None:
        """Write the whole pipeline into the empty `staging` folder (weights, configs, code, model card, and the demo
        app when asked for), keeping other variants' weights already saved in `target`."""
        super().save_pretrained(staging, safe_serialization=True, variant=variant, max_shard_size=max_shard_size)
        self.export_code(staging)
        if demo_app:
            importlib.import_module("hfdiff.demo").write_app(staging)
        if model_card is None and importlib.util.find_spec("hfdiff") is not None:
            model_card = importlib.import_module("hfdiff.hub").build_model_card(self, demo_app=demo_app)
        if model_card is not None:
            model_card.save(staging / "README.md")
        _keep_other_variants(staging, target)

    def push_to_hub(
        self,
        repo_id: str,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        create_pr: bool = False,
        safe_serialization: bool = True,
        variant: str | None = None,
        subfolder: str | None = None,
        *,
        model_card=None,
        extra_files: Sequence[str | os.PathLike] = (),
        demo_app: bool = False,
    ) -> str:
        """`DiffusionPipeline.push_to_hub`: save the pipeline (as `save_pretrained` does: safetensors, exported code,
        model card) into a temporary folder and upload exactly its pipeline files to the Hub repo `repo_id` (created
        if needed), into `subfolder` of the repo when given. `extra_files` (e.g. a samples.png the model card shows)
        are uploaded beside them; `demo_app=True` adds the Gradio app (see `save_pretrained`). Returns the URL of the
        commit."""
        _check_repo_id(repo_id)
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(
                folder,
                safe_serialization=safe_serialization,
                variant=variant,
                model_card=model_card,
                demo_app=demo_app,
            )
            for path in map(Path, extra_files):
                shutil.copyfile(path, Path(folder) / path.name)
            return upload_pipeline_folder(
                folder,
                repo_id,
                private=private,
                token=token,
                commit_message=commit_message,
                create_pr=create_pr,
                path_in_repo=subfolder,
                extra_files=[path.name for path in map(Path, extra_files)],
            )

    def export_code(self, folder: str | os.PathLike) -> None:
        """Copy the source of the pipeline and of every non-diffusers component into a saved folder, in the layout
        of diffusers' custom-code loader, and point model_index.json at those files:
        `_class_name: [pipeline_file, class]` at the top, `[module_file, class]` for each component."""
        folder = Path(folder)
        index_path = folder / "model_index.json"
        index = json.loads(index_path.read_text(encoding="utf-8"))
        pipeline_entry = _copy_class_source(type(self), folder)
        if pipeline_entry is not None:
            index["_class_name"] = pipeline_entry
        for name in self._component_names():
            component = getattr(self, name, None)
            entry = None if component is None else _copy_class_source(type(component), folder / name)
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
        listed = isinstance(class_labels, (Sequence, np.ndarray)) and not isinstance(class_labels, str)
        labels = list(class_labels) if listed else [class_labels]
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
            elif isinstance(label, (int, np.integer)) and not isinstance(label, bool) and 0 <= label < context_dim:
                indices.append(int(label))
            elif not isinstance(label, (int, np.integer)) or isinstance(label, bool):
                raise ValueError(
                    f"class_labels holds {label!r} ({type(label).__name__}); a class label is an index (int) in "
                    f"0..{context_dim - 1} or a class name" + (f" from {names}." if names else ".")
                )
            else:
                raise ValueError(
                    f"Class label {label!r} is out of range: use an index in 0..{context_dim - 1} or a class name"
                    + (f" from {names}." if names else ".")
                )
        return torch.nn.functional.one_hot(torch.tensor(indices), context_dim).float()

    def check_inputs(
        self,
        batch_size,
        class_labels,
        context,
        guidance_scale,
        num_inference_steps,
        eta,
        extra_noise,
        output_type="pil",
        *,
        prompt=None,
        negative_prompt=None,
        prompt_embeds=None,
        negative_prompt_embeds=None,
        num_images_per_prompt=1,
        callback_on_step_end_tensor_inputs=(),
    ):
        """Every argument checked before any work (a bad output_type found after denoising would waste the run)."""
        for name in callback_on_step_end_tensor_inputs:
            if name not in self._callback_tensor_inputs:
                raise ValueError(
                    f"callback_on_step_end_tensor_inputs has {name!r}; choose from {self._callback_tensor_inputs}."
                )
        self.check_text_inputs(
            batch_size,
            class_labels,
            context,
            prompt,
            negative_prompt,
            prompt_embeds,
            negative_prompt_embeds,
            num_images_per_prompt,
        )
        _check_finite("context", context)
        _check_finite("prompt_embeds", prompt_embeds)
        _check_finite("negative_prompt_embeds", negative_prompt_embeds)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        if class_labels is not None and context is not None:
            raise ValueError("Pass either class_labels or context, not both (class labels become one-hot contexts).")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}.")
        if not (isinstance(guidance_scale, (int, float)) and math.isfinite(guidance_scale) and guidance_scale >= 0):
            raise ValueError(
                f"guidance_scale must be a finite number >= 0 (1.0 = plain conditional), got {guidance_scale}."
            )
        conditional = self.unet.config.context_dim is not None
        if not conditional and guidance_scale != 1.0:
            raise ValueError(
                f"guidance_scale={guidance_scale} needs a conditional model, but this one is unconditional "
                "(context_dim=None); use guidance_scale=1.0."
            )
        self.check_scheduler_inputs(num_inference_steps, eta, extra_noise)

    def check_scheduler_inputs(self, num_inference_steps, eta, extra_noise) -> None:
        """A step count the scheduler can take, and eta / extra_noise only where its step takes them."""
        num_train_timesteps = self.scheduler.config.num_train_timesteps
        if num_inference_steps is not None and (
            not isinstance(num_inference_steps, (int, np.integer)) or isinstance(num_inference_steps, bool)
        ):
            raise ValueError(f"num_inference_steps must be a whole number of steps, got {num_inference_steps!r}.")
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
        `hfdiff.fast_sampling.FastSampler(self, **options)`, except calls it cannot run exactly (see
        `FastSampler.fallback_reason`). By default it is faithful: the UNet's own dtype and the step-by-step loop's
        noise for the same generator, so images match the loop to float rounding. Faster, one line away:
        `enable_fast_sampling(dtype=torch.bfloat16)` (a bf16 copy of the UNet; or load the pipeline with
        `torch_dtype=torch.bfloat16`), `compile=True` (torch.compile before recording), and a
        `torch.Generator("cuda")` (a CPU generator's noise is drawn on the CPU and copied over, as diffusers'
        `randn_tensor` does). benchmarks/results/fast_sampling-cuda*.md time each. Off: always the step-by-step loop.
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

    @property
    def guidance_scale(self) -> float:
        """w of classifier-free guidance in the current (or last) call."""
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        """Whether the current call runs the null-context pass beside the conditional one: only with a guidance
        scale other than 1 and a context (class labels or vectors) to guide towards; with neither, the two passes
        would be the same null pass, so one is run."""
        return self._do_classifier_free_guidance

    @property
    def num_timesteps(self) -> int:
        """Denoising steps of the current (or last) call."""
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        """Set `pipe._interrupt = True` from a step callback to skip the remaining steps (diffusers' convention)."""
        return self._interrupt

    def check_text_inputs(
        self,
        batch_size,
        class_labels,
        context,
        prompt,
        negative_prompt,
        prompt_embeds,
        negative_prompt_embeds,
        num_images_per_prompt=1,
    ) -> None:
        """Prompts only for text models, one way of conditioning per call, and prompt counts that fit the batch."""
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be a positive integer, got {num_images_per_prompt!r}.")
        text_given = prompt is not None or prompt_embeds is not None
        if self.text_encoder is None and prompt is not None:
            raise ValueError(
                "This model has no text encoder (it was trained on classes or context vectors), so it cannot take a "
                "prompt: pass class_labels or context, or load a model trained with --conditioning text."
            )
        if self.text_encoder is not None and class_labels is not None:
            raise ValueError(
                "This model is conditioned on text: describe the class in a prompt (e.g. prompt='a hero') instead of "
                "class_labels."
            )
        if text_given and (class_labels is not None or context is not None):
            raise ValueError("Pass a prompt (or prompt_embeds) or class_labels/context, not both.")
        if prompt is not None and prompt_embeds is not None:
            raise ValueError("Pass prompt or prompt_embeds, not both.")
        if not text_given and (negative_prompt is not None or negative_prompt_embeds is not None):
            raise ValueError("negative_prompt needs a prompt (or prompt_embeds) to guide towards.")
        if prompt is not None and not isinstance(prompt, (str, Sequence)):
            raise ValueError(f"prompt must be a string or a non-empty list of strings, got {prompt!r}.")
        for name, embeds in (("prompt_embeds", prompt_embeds), ("negative_prompt_embeds", negative_prompt_embeds)):
            if embeds is not None and not isinstance(embeds, torch.Tensor):
                raise ValueError(f"{name} must be a torch.Tensor (N, context_dim), got {type(embeds).__name__}.")
        if prompt is not None and not isinstance(prompt, str):
            prompts = list(prompt)
            if not prompts or not all(isinstance(p, str) for p in prompts):
                raise ValueError(f"prompt must be a string or a non-empty list of strings, got {prompt!r}.")
            if batch_size not in (1, len(prompts)):
                raise ValueError(
                    f"Got {len(prompts)} prompts for batch_size={batch_size}: give one prompt per image, one prompt "
                    "for all, or leave batch_size at 1 and use num_images_per_prompt for more images per prompt."
                )
        if prompt_embeds is not None:
            rows = 1 if prompt_embeds.ndim == 1 else prompt_embeds.shape[0]
            width = prompt_embeds.shape[-1]
            if prompt_embeds.ndim > 2 or width != self.unet.config.context_dim or batch_size not in (1, rows):
                raise ValueError(
                    f"prompt_embeds has shape {tuple(prompt_embeds.shape)}; expected (N, "
                    f"{self.unet.config.context_dim}) with N = 1 or batch_size={batch_size}."
                )

    @staticmethod
    def _batch_prompts(prompt, prompt_embeds, batch_size: int) -> tuple[list[str] | None, torch.Tensor | None]:
        """One prompt (or prompt vector) per image before num_images_per_prompt: a single one is repeated
        batch_size times."""
        if prompt_embeds is not None:
            prompt_embeds = prompt_embeds.reshape(-1, prompt_embeds.shape[-1])  # (D,) -> (1, D)
            return None, prompt_embeds.expand(batch_size, -1) if len(prompt_embeds) == 1 else prompt_embeds
        return ([prompt] * batch_size if isinstance(prompt, str) else list(prompt)), None

    def encode_prompt(
        self,
        prompt: Sequence[str] | None,
        device,
        num_images_per_prompt: int = 1,
        do_classifier_free_guidance: bool = False,
        negative_prompt: str | Sequence[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Prompts -> (prompt_embeds, negative_prompt_embeds), each (N * num_images_per_prompt, context_dim) in the
        UNet's dtype; the negatives are None without guidance. The empty prompt, and the negative when no
        negative_prompt is given, is the null context (zeros): what caption dropout trains the model on."""
        if prompt_embeds is None:
            prompt_embeds = self._encode_texts(list(prompt), device)
        prompt_embeds = prompt_embeds.reshape(-1, prompt_embeds.shape[-1]).to(device=device, dtype=self.unet.dtype)
        if do_classifier_free_guidance and negative_prompt_embeds is None:
            if negative_prompt is None:
                negative_prompt_embeds = torch.zeros_like(prompt_embeds)
            else:
                negatives = [negative_prompt] if isinstance(negative_prompt, str) else list(negative_prompt)
                if len(negatives) not in (1, len(prompt_embeds)):
                    raise ValueError(
                        f"Got {len(negatives)} negative prompts for {len(prompt_embeds)} prompts; give one for all "
                        "or one per prompt."
                    )
                negative_prompt_embeds = self._encode_texts(negatives, device).expand(len(prompt_embeds), -1)
        if negative_prompt_embeds is not None:
            negative_prompt_embeds = negative_prompt_embeds.reshape(-1, prompt_embeds.shape[-1])
            negative_prompt_embeds = negative_prompt_embeds.to(device, self.unet.dtype).expand_as(prompt_embeds)
            negative_prompt_embeds = negative_prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)
        return prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0), negative_prompt_embeds

    def _encode_texts(self, texts: list[str], device) -> torch.Tensor:
        """(N,) sentences -> (N, D) float32 on `device`; the empty prompt is the null context (zeros)."""
        vectors = encode_text(self.tokenizer, self.text_encoder, texts).to(device)
        empty = torch.tensor([text.strip() == "" for text in texts], device=device)
        return vectors.masked_fill(empty[:, None], 0.0)

    def prepare_guidance_context(
        self,
        batch_size,
        class_labels,
        context,
        prompt,
        negative_prompt,
        num_images_per_prompt,
        prompt_embeds,
        negative_prompt_embeds,
        device,
        dtype,
    ) -> tuple[torch.Tensor | None, int]:
        """What the UNet is called with: (B, D) contexts, or (2B, D) with guidance (conditional rows, then the null
        or negative rows), or None for an unconditional model; and the number of images B. Guidance runs only with
        a guidance scale other than 1 and something to guide towards (a prompt, class labels or a context)."""
        if prompt is not None or prompt_embeds is not None:
            prompts, prompt_embeds = self._batch_prompts(prompt, prompt_embeds, batch_size)
            context, null_context = self.encode_prompt(
                prompts,
                device,
                num_images_per_prompt,
                self.guidance_scale != 1.0,
                negative_prompt,
                prompt_embeds,
                negative_prompt_embeds,
            )
            guided = True
        else:
            guided = class_labels is not None or context is not None
            context = self.prepare_context(class_labels, context, batch_size, device, dtype)  # (B, D) or None
            null_context = None if context is None else torch.zeros_like(context)
        self._do_classifier_free_guidance = guided and self.guidance_scale != 1.0
        if context is None:
            return None, batch_size
        batch_size = context.shape[0]
        if self.do_classifier_free_guidance:
            context = torch.cat([context, null_context])  # (2B, D)
        return context, batch_size

    def prepare_context(self, class_labels, context, batch_size, device, dtype) -> torch.Tensor | None:
        """The context for each image (B, context_dim), the null context (zeros) when neither input is given, or
        None for an unconditional model."""
        if class_labels is not None:
            context = self.encode_class_labels(class_labels, batch_size)
        return self.unet.prepare_context(context, batch_size, device, dtype)

    def prepare_timesteps(self, num_inference_steps: int | None, device) -> torch.Tensor:
        """Set the scheduler's timesteps: None = every training step for DDPM schedulers (the course's sampler),
        50 for others. Returns them, (N,)."""
        if num_inference_steps is None:
            num_train_timesteps = self.scheduler.config.num_train_timesteps
            num_inference_steps = (
                num_train_timesteps if isinstance(self.scheduler, DDPMScheduler) else min(50, num_train_timesteps)
            )
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        # A first-order scheduler visits each timestep once (Heun-like ones, order 2, visit each twice by design);
        # a repeat means the spacing collapsed, e.g. DPMSolverMultistepScheduler with "leading" spacing asked for
        # every training step puts them all at t = 0, and would fail with an IndexError steps later.
        if getattr(self.scheduler, "order", 1) == 1 and len(torch.unique(timesteps)) < len(timesteps):
            raise ValueError(
                f"{type(self.scheduler).__name__} with timestep_spacing="
                f"{self.scheduler.config.get('timestep_spacing')!r} repeats timesteps at num_inference_steps="
                f"{num_inference_steps} of {self.scheduler.config.num_train_timesteps} training steps; pass fewer "
                "steps, or use a DDPM scheduler (--sampler ddpm) to take every step."
            )
        return timesteps

    def prepare_latents(self, batch_size, dtype, device, generator, latents=None) -> torch.Tensor:
        """x_T ~ N(0, I) (B, C, H, W) drawn with `generator` (or the given `latents`), scaled by the scheduler's
        init_noise_sigma for schedulers that start from a larger sigma."""
        sample_size = self.unet.config.sample_size
        height, width = (sample_size, sample_size) if isinstance(sample_size, int) else sample_size
        shape = (batch_size, self.unet.config.in_channels, height, width)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents have shape {tuple(latents.shape)} but batch_size and the model need {shape}.")
        else:
            _check_finite("latents", latents)
        return latents.to(device=device, dtype=dtype) * self.scheduler.init_noise_sigma

    def prepare_extra_step_kwargs(self, generator, eta: float, extra_noise: bool) -> dict:
        """The keywords this scheduler's `step` takes, of generator, eta (DDIM) and extra_noise (sprite DDPM)."""
        return scheduler_step_kwargs(self.scheduler, generator, eta, extra_noise)

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
        prompt: str | Sequence[str] | None = None,
        negative_prompt: str | Sequence[str] | None = None,
        num_images_per_prompt: int = 1,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
    ) -> ImagePipelineOutput | tuple:
        r"""
        Generate images.

        Args:
            batch_size: number of images B.
            class_labels: class names ("hero") or indices, one per image or one for all; become one-hot contexts.
            context: (B, context_dim) or (context_dim,) context vectors, as a tensor or nested lists; real-valued
                mixtures such as hero 1.0 + food 0.6 are fine. Neither class_labels nor context: the null context.
            guidance_scale: w of classifier-free guidance, eps_hat = eps(x,t,null) + w (eps(x,t,c) - eps(x,t,null)).
                1.0 is plain conditional sampling (one forward pass); any other value, with a context to guide
                towards, batches the conditional and the null pass into one forward pass of 2B images.
            num_inference_steps: denoising steps; None = every training step for DDPM schedulers, 50 for others.
            eta: DDIM's noise scale (0 deterministic, 1 DDPM-like); only for schedulers whose step takes eta.
            extra_noise: False skips the sigma_t z term of every DDPM step (needs SpriteDDPMScheduler), the
                classic demonstration that samples collapse to blurry means without it.
            generator: torch.Generator (or one per image) for the initial noise and every step's noise. A CPU
                generator gives the same images on every device.
            latents: (B, C, H, W) starting noise x_T to use instead of drawing it from `generator` (e.g. to compare
                samplers from the same start); scaled by the scheduler's init_noise_sigma like drawn noise.
            output_type: "pil" (list of PIL images), "np" ((B, H, W, C) float in [0, 1]) or "pt"
                ((B, C, H, W) float tensor in [0, 1]).
            return_dict: return an `ImagePipelineOutput` rather than a tuple.
            callback_on_step_end: called after each step as `callback(pipe, i, t, callback_kwargs)` with
                `callback_kwargs["latents"]` the current x_{t-1} (B, C, H, W) in about [-1, 1]; it may return a dict
                whose "latents" replaces the current sample. `TrajectoryRecorder` is a ready one for denoising GIFs.
            callback_on_step_end_tensor_inputs: names passed in `callback_kwargs`; only "latents" is available.
            prompt: for a text model (one with a `text_encoder`): a sentence for the whole batch, or one per image
                (then `batch_size` may be left at 1). The empty prompt "" is the null context.
            negative_prompt: with guidance, what the unconditional pass is pulled away from: one sentence, or one
                per prompt. None: the null context (zeros), which is what caption dropout trained.
            num_images_per_prompt: images generated for each prompt.
            prompt_embeds, negative_prompt_embeds: (N, context_dim) precomputed prompt vectors (from
                `encode_prompt`, or `hfdiff.text.encode_text`) instead of `prompt` / `negative_prompt`.

        Returns:
            `ImagePipelineOutput` with `images` in the chosen output_type.
        """
        # 0. every input checked before any work
        self.check_inputs(
            batch_size,
            class_labels,
            context,
            guidance_scale,
            num_inference_steps,
            eta,
            extra_noise,
            output_type,
            prompt=prompt,
            negative_prompt=negative_prompt,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            num_images_per_prompt=num_images_per_prompt,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
        )
        self._guidance_scale = guidance_scale
        self._interrupt = False
        device, dtype = self._execution_device, self.unet.dtype

        # 1. context c for each image, then the null (or negative) context for the unconditional half of guidance
        context, batch_size = self.prepare_guidance_context(
            batch_size,
            class_labels,
            context,
            prompt,
            negative_prompt,
            num_images_per_prompt,
            prompt_embeds,
            negative_prompt_embeds,
            device,
            dtype,
        )

        # 2. timesteps, 3. x_T
        timesteps = self.prepare_timesteps(num_inference_steps, device)
        self._num_timesteps = len(timesteps)
        latents_in = latents
        latents = self.prepare_latents(batch_size, dtype, device, generator, latents)

        # 5. denoising loop x_T -> x_0
        latents = self.run_denoising(
            latents,
            context,
            timesteps,
            generator,
            eta,
            extra_noise,
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
        )

        # 6. [-1, 1] -> [0, 1] images, refused if any value is NaN or inf (they would be black, with no error)
        self.check_output(
            latents, guidance_scale=guidance_scale, inputs={"context or prompt_embeds": context, "latents": latents_in}
        )
        images = self.postprocess(latents, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)

    def run_denoising(
        self, latents, context, timesteps, generator, eta, extra_noise, callback_on_step_end, callback_tensor_inputs
    ) -> torch.Tensor:
        """x_T (B, C, H, W) -> x_0: on CUDA, hfdiff's FastSampler replays one recorded step (the same math, dtype and
        noise as the step-by-step loop) unless the call needs the step-by-step loop (`denoise`)."""
        fast_sampler = self._fast_sampler_for(latents.device, generator, callback_on_step_end)
        if fast_sampler is not None:
            return fast_sampler.sample(
                latents,
                context,
                guidance_scale=self.guidance_scale if self.do_classifier_free_guidance else 1.0,
                eta=eta,
                extra_noise=extra_noise,
                generator=generator,
            )
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta, extra_noise)
        return self.denoise(
            latents, context, timesteps, extra_step_kwargs, callback_on_step_end, callback_tensor_inputs
        )

    def denoise(
        self, latents, context, timesteps, extra_step_kwargs, callback_on_step_end=None, callback_tensor_inputs=()
    ) -> torch.Tensor:
        """The step-by-step loop: x_T (B, C, H, W) -> x_0, one UNet pass (2B images with guidance) and one
        scheduler step per timestep."""
        guidance = self.do_classifier_free_guidance
        for i, t in enumerate(self.progress_bar(timesteps)):
            if self.interrupt:
                continue
            model_input = torch.cat([latents, latents]) if guidance else latents
            model_input = self.scheduler.scale_model_input(model_input, t)
            model_output = self.unet(model_input, t, context=context).sample
            if guidance:
                # classifier-free guidance (Ho & Salimans 2022, eq. 6)
                cond, null = model_output.chunk(2)
                model_output = null + self.guidance_scale * (cond - null)
            latents = self.scheduler.step(model_output, t, latents, **extra_step_kwargs).prev_sample

            if callback_on_step_end is not None:
                available = {"latents": latents}
                callback_kwargs = {name: available[name] for name in callback_tensor_inputs}
                callback_outputs = callback_on_step_end(self, i, t, callback_kwargs) or {}
                latents = callback_outputs.get("latents", latents)
        return latents

    def check_output(self, sample: torch.Tensor, guidance_scale: float, inputs: dict) -> None:
        """Refuse a denoised sample (B, C, H, W) holding NaN or inf, with the likely cause. Finite inputs can still
        overflow on the way (a guidance scale of 1e30, a context or latents of 1e30, weights of 1e38, a schedule that
        divides by sqrt(abar_T) = 0), and the images would be black with no error. One isfinite reduction over the
        sample, on either sampling path; the causes are looked for only after it fails. `inputs`: the context and
        latents given, by name."""
        if torch.isfinite(sample).all():
            return
        causes = []
        if guidance_scale > 100:
            causes.append(f"guidance_scale={guidance_scale:g} (1 to 10 are usual)")
        for name, value in inputs.items():
            if isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel():
                largest = value.detach().abs().max().item()
                if largest > 1e3:
                    causes.append(f"{name} with values up to {largest:.3g} (contexts are about 1, latents unit noise)")
        largest_weight = max((p.detach().abs().max().item() for p in self.unet.parameters() if p.numel()), default=0)
        if not largest_weight < 1e6:
            causes.append(f"UNet weights up to {largest_weight:.3g} (a damaged or diverged model)")
        config = self.scheduler.config
        if config.get("rescale_betas_zero_snr") and config.get("prediction_type") == "epsilon":
            causes.append(
                "a scheduler with rescale_betas_zero_snr=True and prediction_type='epsilon' (x0_hat divides by "
                "sqrt(abar_T) = 0: use v_prediction, or no rescale)"
            )
        if self.unet.dtype == torch.float16:
            causes.append("float16 weights (their range ends at 65504: try float32 or bfloat16)")
        bad = int((~torch.isfinite(sample)).sum())
        likely = "; ".join(causes) if causes else "no input out of the ordinary: the model's weights or the scheduler"
        raise ValueError(
            f"Sampling produced {bad} NaN or infinite value(s) of {sample.numel()}, which would be black images. "
            f"Likely cause: {likely}. Pass smaller values, or check the model and its scheduler config."
        )

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
            images = upscale_images(images, scale)
            frames.append(make_image_grid(images, rows=rows, cols=len(images) // rows))
        return frames


def _check_finite(name: str, value) -> None:
    """Refuse NaN or inf in a context, an embedding or the starting latents, which would make every image NaN (black)
    with no error."""
    if value is None:
        return
    try:
        tensor = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        return  # not an array of numbers: the shape and type checks report it
    if tensor.is_floating_point() and not torch.isfinite(tensor).all():
        bad = ~torch.isfinite(tensor)
        first = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"{name} holds {int(bad.sum())} NaN or infinite value(s) (the first at index {first}: "
            f"{tensor[first].item()}); it must hold finite numbers, or every image comes out NaN (black). Check how it "
            "was computed (a division by zero, a log of 0)."
        )


def scheduler_step_kwargs(scheduler, generator, eta: float, extra_noise: bool) -> dict:
    """The keywords of generator, eta (DDIM) and extra_noise (sprite DDPM) that `scheduler.step` takes, by its
    signature: what the pipeline's loop passes, and what hfdiff's fast sampler probes the step with."""
    parameters = inspect.signature(scheduler.step).parameters
    candidates = {"generator": generator, "eta": eta, "extra_noise": extra_noise}
    return {name: value for name, value in candidates.items() if name in parameters}


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


# ----------------------------------------------------------------------------------------------------------------
# Loading: DiffusionPipeline.from_pretrained's keywords, without running any code from the folder
# ----------------------------------------------------------------------------------------------------------------

_DOWNLOAD_KEYS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision")
# Keywords of DiffusionPipeline.from_pretrained that this pipeline does not take, with what to do instead.
_UNSUPPORTED_LOAD_KEYS = {
    "custom_pipeline": "the pipeline class is SpriteDiffusionPipeline itself; load other pipelines with their class",
    "custom_revision": "no pipeline code is fetched where hfdiff is installed; pass `revision` for the weights",
    "device_map": "load, then move the pipeline with pipe.to(device)",
    "max_memory": "the models are small enough to load whole; move them with pipe.to(device)",
    "offload_folder": "the models are small enough to load whole; use pipe.enable_model_cpu_offload() to offload",
    "offload_state_dict": "the models are small enough to load whole",
    "quantization_config": "quantizing a UNet of a few million parameters saves nothing; use torch_dtype",
    "use_onnx": "only safetensors weights are loaded",
    "use_flashpack": "only safetensors weights are loaded",
    "load_connected_pipeline": "this pipeline has no connected pipelines",
}
# Each component slot's expected base class, as (library, class name): a model_index.json that names another kind
# of class for a slot (say, a model class for the scheduler) is refused before anything is read from its folder.
_SLOT_BASES = {
    "unet": ("diffusers", "ModelMixin"),
    "scheduler": ("diffusers", "SchedulerMixin"),
    "text_encoder": ("transformers", "PreTrainedModel"),
    "tokenizer": ("transformers", "PreTrainedTokenizerBase"),
}
# Where component classes are looked up by the name model_index.json gives: never an arbitrary module.
_CLASS_SOURCES = ("hfdiff", "diffusers", "transformers")
# Weights of other formats in a component folder are not downloaded (and never loaded).
_NOT_DOWNLOADED = ["*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.pickle", "*.msgpack", "*.h5", "*.onnx", "*.py"]


@dataclass
class _LoadOptions:
    """The keywords of `from_pretrained`, sorted by what they are for."""

    download: dict
    variant: str | None = None
    torch_dtype: torch.dtype | dict | None = None
    low_cpu_mem_usage: bool | None = None

    @classmethod
    def from_kwargs(cls, kwargs: dict) -> "_LoadOptions":
        for key, instead in _UNSUPPORTED_LOAD_KEYS.items():
            if kwargs.get(key) is not None:
                raise ValueError(f"SpriteDiffusionPipeline.from_pretrained does not take {key}: {instead}.")
            kwargs.pop(key, None)
        if kwargs.pop("use_safetensors", None) is False:
            raise ValueError(
                "use_safetensors=False: hfdiff loads safetensors weights only (pickled weights can run code when "
                "loaded). Leave use_safetensors unset, or convert the weights once with diffusers."
            )
        kwargs.pop("trust_remote_code", None)  # no remote code runs where hfdiff is installed (see from_pretrained)
        options = cls(
            download={key: kwargs.pop(key) for key in _DOWNLOAD_KEYS if key in kwargs},
            variant=kwargs.pop("variant", None),
            torch_dtype=kwargs.pop("torch_dtype", kwargs.pop("dtype", None)),
            low_cpu_mem_usage=kwargs.pop("low_cpu_mem_usage", None),
        )
        if kwargs:
            raise TypeError(f"Unexpected arguments for SpriteDiffusionPipeline.from_pretrained: {sorted(kwargs)}.")
        return options

    def dtype_for(self, name: str) -> torch.dtype | None:
        if isinstance(self.torch_dtype, dict):
            return self.torch_dtype.get(name, self.torch_dtype.get("default"))
        return self.torch_dtype


def _pipeline_folder(name_or_path: str | os.PathLike, options: _LoadOptions) -> Path:
    """A local pipeline folder, or the Hub repo's pipeline files downloaded into the cache (files only: nothing in the
    repo is imported or unpickled by fetching it)."""
    folder = Path(name_or_path)
    if not folder.is_dir():
        from huggingface_hub import hf_hub_download, snapshot_download
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(str(name_or_path))
        except HFValidationError:
            raise FileNotFoundError(
                f"{name_or_path} is not a folder (and not a Hub repo id such as 'user/model'): check the path, or "
                "save a pipeline there with pipe.save_pretrained(path)."
            ) from None
        index = _read_json(hf_hub_download(str(name_or_path), "model_index.json", **options.download))
        components = [name for name in index if name in _SLOT_BASES]
        allow = ["model_index.json"]
        for name in components:  # configs and tokenizer files, then the weights of the requested variant only
            allow += [f"{name}/*.json", f"{name}/*.txt", f"{name}/*.model"]
            if options.variant is None:
                allow += [f"{name}/*.safetensors"]
            else:
                allow += [f"{name}/*.{options.variant}.safetensors", f"{name}/*.{options.variant}-*.safetensors"]
        # `name.fp16.safetensors` matches `*.safetensors` too: with no variant asked for, leave variants out.
        ignore = _NOT_DOWNLOADED + (["*.*.safetensors"] if options.variant is None else [])
        folder = Path(
            snapshot_download(str(name_or_path), allow_patterns=allow, ignore_patterns=ignore, **options.download)
        )
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        if any((folder / name).is_dir() for name in _SLOT_BASES):
            raise FileNotFoundError(
                f"{index_path} does not exist, but {folder} has pipeline components: a save that was cut short "
                "(model_index.json is written last). Save the pipeline again with pipe.save_pretrained(path), "
                "or rerun the training with --resume_from_checkpoint latest, which saves it at the end."
            )
        raise FileNotFoundError(
            f"{index_path} does not exist: {name_or_path} is not a saved pipeline folder "
            "(save one with pipe.save_pretrained(path))."
        )
    return folder


def _component_class(index_path: Path, name: str, entry) -> type:
    """The installed class model_index.json names for slot `name`, checked against the slot's expected base."""
    if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], str)):
        raise ValueError(f"{index_path} has no [library, class] entry for {name!r}; the folder is incomplete.")
    modules = [importlib.import_module(source) for source in _CLASS_SOURCES if importlib.util.find_spec(source)]
    component_cls = next((getattr(m, entry[1]) for m in modules if isinstance(getattr(m, entry[1], None), type)), None)
    if component_cls is None:
        raise ValueError(
            f"{index_path} names {entry[1]!r} for {name!r}, which none of {', '.join(_CLASS_SOURCES)} defines; "
            f"upgrade them or pass the component in (e.g. {name}=...)."
        )
    library, base_name = _SLOT_BASES.get(name, ("diffusers", "ConfigMixin"))
    base = getattr(importlib.import_module(library), base_name)
    if not issubclass(component_cls, base):
        raise ValueError(
            f"{index_path} names {entry[1]!r} for the {name!r} slot, which takes a {base_name} ({library}); the "
            "index is damaged or was edited. Save the pipeline again with pipe.save_pretrained(path)."
        )
    return component_cls


def _load_component(folder: Path, name: str, index: dict, options: _LoadOptions, optional: bool = False):
    """One component from its subfolder, by its installed class: configs checked, weights from safetensors only."""
    index_path = folder / "model_index.json"
    entry = index.get(name)
    if optional and entry in (None, [None, None]):
        return None  # an optional component the pipeline was saved without
    component_cls = _component_class(index_path, name, entry)
    component_folder = folder / name
    if not component_folder.is_dir():
        raise FileNotFoundError(
            f"{index_path} names a {name!r} component but {component_folder} does not exist; the folder is "
            "incomplete: save it again with pipe.save_pretrained(path)."
        )
    if name in _REQUIRED_CONFIG:
        _check_config(component_cls, component_folder, name)
    if name == "text_encoder" and (component_folder / "config.json").is_file():  # sizes, before anything is built
        check_text_encoder_config(_read_json(component_folder / "config.json"), str(component_folder / "config.json"))
    if issubclass(component_cls, torch.nn.Module):
        # diffusers models save diffusion_pytorch_model.safetensors, transformers models model.safetensors
        diffusers_model = component_cls.__module__.split(".")[0] in ("diffusers", "hfdiff") or name == "unet"
        _check_weights(component_folder, options.variant, "diffusion_pytorch_model" if diffusers_model else "model")
        model_kwargs = {"torch_dtype": options.dtype_for(name), "use_safetensors": True, "variant": options.variant}
        if options.low_cpu_mem_usage is not None:
            model_kwargs["low_cpu_mem_usage"] = options.low_cpu_mem_usage
        model = component_cls.from_pretrained(str(component_folder), **model_kwargs)
        _check_finite_weights(model, name, component_folder)
        return model
    return component_cls.from_pretrained(str(component_folder))  # schedulers, tokenizers: configs and vocabularies


def _check_finite_weights(model: torch.nn.Module, name: str, component_folder: Path) -> None:
    """Refuse weights that load but hold NaN or inf (a run that diverged, a damaged file): they sample black images
    with no error. One pass over the tensors: about 0.1 s for 100M parameters on a CPU."""
    for tensor_name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and tensor.device.type != "meta" and not torch.isfinite(tensor).all():
            count = int((~torch.isfinite(tensor)).sum())
            raise ValueError(
                f"The {name!r} component in {component_folder} has {count} NaN or infinite value(s) in "
                f"{tensor_name!r}: the weights are damaged (a training run that diverged, or a corrupted file) and "
                "would give black images. Load an earlier checkpoint, or train again (a lower learning rate, "
                "--mixed_precision no)."
            )


def _weights_variant(path: Path) -> str | None:
    """The variant in a weights file name, as diffusers and transformers write them: "model.fp16.safetensors" and
    "model.fp16-00001-of-00002.safetensors" -> "fp16"; "model.safetensors" -> None."""
    parts = path.name.removesuffix(".safetensors").split(".")
    return parts[-1].split("-")[0] if len(parts) > 1 else None


def _check_weights(component_folder: Path, variant: str | None = None, weights_stem: str = "model") -> None:
    """Refuse pickled weights, a missing variant, and safetensors files that are truncated or corrupted, with an error
    naming the file."""
    from safetensors import SafetensorError, safe_open

    all_files = sorted(component_folder.glob("*.safetensors"))
    variants = sorted({_weights_variant(path) for path in all_files} - {None})
    safetensors_files = [path for path in all_files if _weights_variant(path) == variant]
    if not safetensors_files:
        pickled = sorted(path for path in component_folder.iterdir() if path.suffix in _PICKLE_SUFFIXES)
        if pickled:
            raise ValueError(
                f"{pickled[0]} holds pickled weights, which hfdiff never loads (unpickling can run arbitrary code). "
                "If you trust the file, convert it once with diffusers or transformers: load it with "
                "`use_safetensors=False` and `save_pretrained` it, which writes safetensors."
            )
        expected = f"{weights_stem}.{variant}.safetensors" if variant else f"{weights_stem}.safetensors"
        found = f" (it has the variant(s) {variants}: pass variant=... to load one)" if variants else ""
        raise FileNotFoundError(
            f"{component_folder} has no weights: expected {expected}{found}. Save the pipeline again with "
            f"pipe.save_pretrained(path{', variant=' + repr(variant) if variant else ''})."
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


def _keep_other_variants(staging: Path, target: Path) -> None:
    """Copy into the staged components the weights of other variants already saved in `target` (a save with
    variant="fp16" beside a full-precision one keeps both, as diffusers does), where the component's config is
    unchanged; a changed config means other weights no longer fit, and they are dropped with the old folder."""
    for staged in (path for path in staging.iterdir() if path.is_dir()):
        existing = target / staged.name
        configs = [name for name in ("config.json",) if (staged / name).is_file()]
        if not configs or not (existing / configs[0]).is_file():
            continue
        if _read_json(existing / configs[0]) != _read_json(staged / configs[0]):
            continue
        written = {_weights_variant(path) for path in staged.glob("*.safetensors")}
        for path in existing.glob("*.safetensors"):
            if _weights_variant(path) not in written and not (staged / path.name).exists():
                shutil.copy2(path, staged / path.name)


# ----------------------------------------------------------------------------------------------------------------
# Uploading: exactly the files a save wrote
# ----------------------------------------------------------------------------------------------------------------

_UPLOAD_KEYS = ("repo_id", "commit_message", "private", "token", "create_pr")
_CARD_FILES = ("README.md", "samples.png")  # the model card and the sample grid it shows
_APP_FILES = ("app.py", "requirements.txt")  # save_pretrained(demo_app=True)'s Gradio app (hfdiff.demo.APP_FILES)
# The first line of the app.py that hfdiff.demo writes (APP_PY; a test ties the two). Written out here because this
# file also runs without hfdiff, as the exported pipeline code.
_APP_MARKER = "written by hfdiff's save_pretrained(demo_app=True)"


def _drop_stale_app(target: Path) -> None:
    """A plain save over a folder that an earlier save_pretrained(demo_app=True) wrote: that app.py and its
    requirements.txt belong to a save that is gone (and push_to_hub would upload them with the new one), so they go
    too. An app.py without hfdiff's first line is the user's own and stays."""
    try:
        ours = _APP_MARKER in (target / "app.py").read_text(encoding="utf-8", errors="replace")[:300]
    except OSError:  # no app.py (or an unreadable one, which is not ours to delete)
        return
    if ours:
        for name in _APP_FILES:
            (target / name).unlink(missing_ok=True)


def _pop_upload_kwargs(kwargs: dict, default_repo_id: str) -> dict:
    """save_pretrained(push_to_hub=True)'s upload keywords, as DiffusionPipeline.save_pretrained takes them."""
    upload = {key: kwargs.pop(key) for key in _UPLOAD_KEYS if key in kwargs}
    upload.setdefault("repo_id", default_repo_id)
    return upload


def _check_repo_id(repo_id: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"repo_id {repo_id!r} is not a valid Hub repo id ({error}); use 'user/model-name'.") from None


def pipeline_files(folder: str | os.PathLike) -> list[str]:
    """The files of the pipeline saved in `folder`, relative to it, and nothing else there: model_index.json, the
    model card and its sample grid, the exported pipeline code, and the plain files of each component folder that
    model_index.json names, and the demo app (app.py, requirements.txt) where there is one. Checkpoints, logs and validation images that training keeps beside them, hidden files,
    nested folders and symbolic links are left out."""
    folder = Path(folder)
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise FileNotFoundError(
            f"{index_path} does not exist: {folder} is not a saved pipeline folder (save one with "
            "pipe.save_pretrained(path), or train one with train_conditional.py)."
        )
    index = _read_json(index_path)
    files = ["model_index.json", *(name for name in _CARD_FILES + _APP_FILES if (folder / name).is_file())]
    pipeline_entry = index.get("_class_name")
    if isinstance(pipeline_entry, list) and (folder / f"{pipeline_entry[0]}.py").is_file():
        from diffusers.utils.dynamic_modules_utils import get_relative_import_files

        code = folder / f"{pipeline_entry[0]}.py"  # and the modules it imports relatively (text_encoding.py)
        files += sorted(str(Path(path).relative_to(folder)) for path in [code, *get_relative_import_files(code)])
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or entry == [None, None]:
            continue
        if not name.isidentifier():
            raise ValueError(f"{index_path} names a component {name!r}, which is not a valid component name.")
        component = folder / name
        if component.is_symlink() or not component.is_dir():
            continue
        files += [
            f"{name}/{path.name}"
            for path in sorted(component.iterdir())
            if path.is_file() and not path.is_symlink() and not path.name.startswith(".")
        ]
    return files


def upload_pipeline_folder(
    folder: str | os.PathLike,
    repo_id: str,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    path_in_repo: str | None = None,
    extra_files: Sequence[str] = (),
) -> str:
    """Upload the pipeline saved in `folder` (exactly `pipeline_files(folder)`, plus `extra_files` named relative to
    it) to the Hub repo `repo_id`, created if needed, with huggingface_hub's create_repo + upload_folder: the one
    upload path of `push_to_hub`, `save_pretrained(push_to_hub=True)` and training's --push_to_hub. Returns the URL
    of the commit."""
    from huggingface_hub import HfApi

    _check_repo_id(repo_id)
    files = [*pipeline_files(folder), *(name for name in extra_files if name not in pipeline_files(folder))]
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        path_in_repo=path_in_repo,
        allow_patterns=[glob.escape(name) for name in files],  # exact names: no pattern widens the upload
        commit_message=commit_message or "Upload SpriteDiffusionPipeline trained with hfdiff",
        create_pr=create_pr,
    )
    return str(getattr(commit, "commit_url", commit))


def upscale_images(images, scale: int) -> list:
    """Nearest-neighbour upscaling (crisp pixels) of PIL images by an integer factor: how hfdiff shows 16x16 sprites
    (the trajectory recorder here; grids in hfdiff.visualize and training)."""
    if scale == 1:
        return list(images)
    return [image.resize((image.width * scale, image.height * scale), resample=0) for image in images]  # 0: NEAREST


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
    """The component's config file exists, is JSON, has every entry of _REQUIRED_CONFIG that its class takes, sizes
    within the class's limits (ContextUNet2DModel.check_config_limits) and no entry the class does not know
    (ContextUNet2DModel.check_config_entries), checked before anything is built."""
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
    if hasattr(component_cls, "check_config_limits"):  # sizes that would allocate without bound, refused before
        component_cls.check_config_limits(config, source=str(config_path))
    if hasattr(component_cls, "check_config_entries"):  # entries the installed class would silently drop
        component_cls.check_config_entries(config, source=str(config_path))


def retired_path(path: str | os.PathLike) -> Path:
    """Where `replace_path` (and checkpoint pruning) parks an entry before deleting it: `.<name>.old` beside it."""
    path = Path(path)
    return path.parent / f".{path.name}.old"


def replace_path(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Move the file or folder `src` to `dst` (in the same filesystem), replacing what is there. Each step is one
    rename(2): a file is replaced atomically; a folder (which rename cannot replace while it is non-empty) is first
    renamed aside to `retired_path(dst)`, and deleted only after the new one is in place, so `dst` is always the old
    or the new entry, or absent for the instant between the two renames (and the old one again if the second rename
    fails). The one folder swap of hfdiff: pipeline saves and training checkpoints both go through it."""
    src, dst = Path(src), Path(dst)
    if src.is_dir() and dst.exists():
        retired = retired_path(dst)
        shutil.rmtree(retired, ignore_errors=True)
        os.replace(dst, retired)
        try:
            os.replace(src, dst)
        except OSError:
            os.replace(retired, dst)
            raise
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(src, dst)


# Where a save is staged, inside the target folder: renames from there into the target never cross a filesystem.
_STAGING_PREFIX = ".saving-"


def _new_staging_folder(target: Path) -> Path:
    """An empty staging folder inside `target`, after removing those of saves that were killed (two saves into one
    folder at once are not supported anyway). Nothing in `target`'s parent is created or removed."""
    for stale in target.glob(glob.escape(_STAGING_PREFIX) + "*"):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=target))


def _check_swappable(staging: Path, target: Path) -> None:
    """Before the old index is removed: every entry the swap renames (the staged ones, and the old ones they
    replace, which are renamed aside inside `target`) is on the staging folder's filesystem, so no rename of the
    swap can fail with EXDEV half-way. An old component folder can be elsewhere only as a mount point; a symbolic
    link is renamed itself, wherever it points."""
    device = os.stat(staging).st_dev
    for entry in staging.iterdir():
        existing = target / entry.name
        if existing.exists() and not existing.is_symlink() and os.stat(existing).st_dev != device:
            raise OSError(
                errno.EXDEV,
                f"{existing} is on another filesystem than {target} (a mount point), so a save cannot replace it "
                "by renaming",
            )


# errno values of writes that did not fit: a full disk, a quota, a file size limit (ulimit -f).
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_CAUSES = {
    errno.EXDEV: "a rename would cross filesystems: save to a folder whose entries are on one filesystem",
    errno.EACCES: "permission denied: save to a folder you can write to, or fix its permissions",
    errno.EPERM: "the operation is not permitted there: save to a folder you can write to, or fix its permissions",
    errno.EROFS: "the filesystem is read-only: save to a folder on a writable one",
}


def save_failure_cause(error: BaseException, folder: str | os.PathLike) -> tuple[int | None, str | None]:
    """(errno, cause and fix in words) of a write into `folder` that failed with `error`: by its errno, or, for
    errors that carry none (safetensors' SafetensorError, torch's RuntimeError), by the system's message for it in
    the text; (None, None) for an error of another kind, which callers quote rather than guess at. The one reading
    of a failed save: pipeline saves and training checkpoints both use it."""
    code = getattr(error, "errno", None)
    if code is None:
        code = next((c for c in (*_NO_ROOM, *_CAUSES) if os.strerror(c) in str(error)), None)
    if code in _NO_ROOM:
        folder = Path(folder)
        try:
            free = f"{shutil.disk_usage(folder if folder.exists() else folder.parent).free / 2**20:,.0f} MiB free"
        except OSError:
            free = "free space unknown"
        return code, f"the disk is full or a file size limit was reached ({free} there): free space, or save elsewhere"
    return code, _CAUSES.get(code)


def _save_error(target: Path, error: Exception, state: str) -> OSError:
    """An OSError for a save into `target` that failed with `error`, naming the cause (`save_failure_cause`), the fix,
    and `state`: what the failure left in the folder. Keeps the errno, so callers can test it."""
    code, cause = save_failure_cause(error, target)
    failure = OSError(
        f"Could not save the pipeline to {target} ({type(error).__name__}: {error})"
        + (f"; {cause}. " if cause else ". ")  # an error of another kind is quoted, not guessed at
        + f"{state}."
    )
    failure.errno = code
    return failure


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
