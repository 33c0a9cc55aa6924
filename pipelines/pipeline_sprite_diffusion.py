"""SpriteDiffusionPipeline: sample a ContextUNet2DModel with DDPM, DDIM or any diffusers scheduler.

This module imports only torch, numpy, diffusers and its sibling modules (relatively), so it travels next to a saved
pipeline as stand-alone code: `DiffusionPipeline.from_pretrained(..., trust_remote_code=True)` loads it where hfdiff
is not installed, and diffusers' remote-code loader copies the relative imports along. Loading a folder, saving one
(staging and the atomic swap), uploading and the CUDA-graph sampler are hfdiff's (`hfdiff.folder_loading`,
`hfdiff.folder_saving`, `hfdiff.hub`, `hfdiff.fast_sampling`): the methods import them inside `try` blocks, which
diffusers' check of a remote module's requirements skips, and fall back to diffusers' own behaviour where hfdiff is
missing.
"""

from __future__ import annotations

import inspect
import math
import os
import weakref
from collections.abc import Callable, Sequence

import numpy as np
import torch
from diffusers import DDPMScheduler, DiffusionPipeline, ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from .image_processing import OUTPUT_TYPES, postprocess_sample, upscale_images
from .scheduler_steps import scheduler_step_kwargs
from .text_encoding import encode_text, text_embedding_dim

ClassLabel = int | str
# The scheduler config entry that holds the sampling recipe, {"sampler", "num_inference_steps", "eta",
# "guidance_scale"}: what a call runs for each of those keywords it is not given. It lives in the scheduler's config
# because the scheduler is the sampler: it is saved in scheduler_config.json, kept by every diffusers scheduler's
# from_config (as diffusers keeps other schedulers' entries), and needs no code to load. Private (leading "_"), as
# diffusers' own bookkeeping entries are, so that schedulers do not warn about an entry they do not take.
SAMPLING_RECIPE = "_sampling_recipe"


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
    >>> pipe(batch_size=4, class_labels="hero").images  # four heroes: the saved recipe (dpm++, 25 steps, w = 1.5)
    >>> pipe(context=[[1.0, 0, 0.6, 0, 0]]).images  # a mixture: hero + 0.6 food
    >>> from hfdiff.samplers import with_sampler
    >>> with_sampler(pipe, "ddpm")(batch_size=4, class_labels="hero").images  # the course's DDPM: every step, w = 1
    >>> pipe.scheduler = SpriteDDIMScheduler.from_config(pipe.scheduler.config)
    >>> pipe(batch_size=5, class_labels=[0, 1, 2, 3, 4], num_inference_steps=25, guidance_scale=1.0).images  # DDIM
    >>> text_pipe = SpriteDiffusionPipeline.from_pretrained("sprite-text-model")  # trained with --conditioning text
    >>> text_pipe(prompt="a green slime monster", num_images_per_prompt=4, guidance_scale=3.0).images
    ```

    Sampling defaults: a call runs the recipe its scheduler carries (`sampling_defaults`) for each of
    `num_inference_steps`, `guidance_scale` and `eta` it is not given. Training saves the recommended one
    (hfdiff.samplers' "dpm++": DPM-Solver++ 2M SDE, 25 steps, w = 1.5); `hfdiff.samplers.with_sampler(pipe, name)`
    sets another. A scheduler without a recipe (folders saved without one, schedulers built by hand) samples every
    training step with DDPM schedulers and 50 steps with others, at w = 1 and eta = 0.
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
        try:
            from hfdiff.folder_loading import from_pretrained
        except ImportError:  # this file exported next to a saved model, running with diffusers alone
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        return from_pretrained(cls, pretrained_model_name_or_path, kwargs)

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
            demo_app: also write `app.py` and `requirements.txt` (`hfdiff.demo_app.write_app`), a Gradio app for this
                folder, so that it runs as a Hub Space as it is; the built model card says so. Needs hfdiff.
        """
        if not safe_serialization:
            raise ValueError(
                "SpriteDiffusionPipeline saves safetensors only: pickled weights can run code when loaded. "
                "Leave safe_serialization=True."
            )
        try:
            from hfdiff.folder_saving import save_pipeline
        except ImportError:  # this file exported next to a saved model, running with diffusers alone
            if demo_app or model_card is not None:
                raise ValueError(
                    "model_card and demo_app=True are hfdiff's additions to the saved folder, which need hfdiff: "
                    "`pip install hfdiff[demo]`."
                ) from None
            return super().save_pretrained(
                save_directory, variant=variant, max_shard_size=max_shard_size, push_to_hub=push_to_hub, **kwargs
            )
        save_pipeline(self, save_directory, variant, max_shard_size, push_to_hub, model_card, demo_app, **kwargs)

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
        try:
            from hfdiff.hub import push_pipeline
        except ImportError:  # this file exported next to a saved model, running with diffusers alone
            return super().push_to_hub(
                repo_id,
                commit_message=commit_message,
                private=private,
                token=token,
                create_pr=create_pr,
                safe_serialization=safe_serialization,
                variant=variant,
                subfolder=subfolder,
            )
        return push_pipeline(
            self,
            repo_id,
            commit_message=commit_message,
            private=private,
            token=token,
            create_pr=create_pr,
            safe_serialization=safe_serialization,
            variant=variant,
            subfolder=subfolder,
            model_card=model_card,
            extra_files=extra_files,
            demo_app=demo_app,
        )

    def export_code(self, folder: str | os.PathLike) -> None:
        """Copy the source of the pipeline and of every non-diffusers component into a saved folder, in the layout
        of diffusers' custom-code loader, and point model_index.json at those files:
        `_class_name: [pipeline_file, class]` at the top, `[module_file, class]` for each component."""
        try:
            from hfdiff.folder_saving import export_code
        except ImportError as error:  # this file exported next to a saved model, running with diffusers alone
            raise ImportError("export_code writes hfdiff's layout of exported code: `pip install hfdiff`.") from error
        export_code(self, folder)

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
                'use hfdiff.samplers.with_sampler(pipe, "ddpm") (or --sampler ddpm on the command line), or swap it in '
                "with pipe.scheduler = SpriteDDPMScheduler.from_config(pipe.scheduler.config)."
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
        if options is None:
            return None
        try:
            from hfdiff.fast_sampling import FastSampler
        except ImportError:  # this file exported next to a saved model, running with diffusers alone
            return None
        if getattr(self, "_fast_sampler", None) is None:
            # A weak proxy: a sampler holding the pipeline that holds it would be a reference cycle, kept alive (with
            # its CUDA graphs, their memory pools and a UNet copy) until Python's cycle collector happens to run.
            self._fast_sampler = FastSampler(weakref.proxy(self), **options)
        reason = self._fast_sampler.fallback_reason(
            device=device, generator=generator, callback_on_step_end=callback_on_step_end
        )
        return self._fast_sampler if reason is None else None

    @property
    def sampling_defaults(self) -> dict:
        """What a call runs for each sampling keyword it is not given: {"sampler" (a name of hfdiff.samplers, or
        None), "num_inference_steps", "eta", "guidance_scale"}, from the recipe the scheduler carries in its config
        (SAMPLING_RECIPE, written by hfdiff.samplers.with_sampler and so by training), else the scheduler's own:
        every training step for DDPM schedulers (the course's sampler), 50 (at most T) for others, eta 0 and
        guidance 1 (also where the recipe names another scheduler class than the one in place). The guidance applies
        only where there is a context to guide towards: an unconditional model, or a call without class labels,
        context or prompt, runs one plain pass whatever it says."""
        num_train_timesteps = self.scheduler.config.num_train_timesteps
        steps = num_train_timesteps if isinstance(self.scheduler, DDPMScheduler) else min(50, num_train_timesteps)
        defaults = {"sampler": None, "num_inference_steps": steps, "eta": 0.0, "guidance_scale": 1.0}
        recipe = self.scheduler.config.get(SAMPLING_RECIPE) or {}
        if recipe.get("scheduler", type(self.scheduler).__name__) != type(self.scheduler).__name__:
            # A scheduler swapped in by hand (`OtherScheduler.from_config(pipe.scheduler.config)`) inherits the
            # config entry, but a recipe made for another sampler says nothing about this one.
            recipe = {}
        return {**defaults, **{key: recipe[key] for key in defaults if recipe.get(key) is not None}}

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
        """What the UNet is called with: (B, D) contexts, or (2B, D) with guidance (the null or negative rows, then
        the conditional ones, as diffusers orders them), or None for an unconditional model; and the number of images B. Guidance runs only with
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
            context = torch.cat([null_context, context])  # (2B, D): diffusers' order, unconditional half first
        return context, batch_size

    def prepare_context(self, class_labels, context, batch_size, device, dtype) -> torch.Tensor | None:
        """The context for each image (B, context_dim), the null context (zeros) when neither input is given, or
        None for an unconditional model."""
        if class_labels is not None:
            context = self.encode_class_labels(class_labels, batch_size)
        return self.unet.prepare_context(context, batch_size, device, dtype)

    def prepare_timesteps(self, num_inference_steps: int | None, device) -> torch.Tensor:
        """Set the scheduler's timesteps: None = `sampling_defaults`' count. Returns them, (N,)."""
        if num_inference_steps is None:
            num_inference_steps = self.sampling_defaults["num_inference_steps"]
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
        guidance_scale: float | None = None,
        num_inference_steps: int | None = None,
        eta: float | None = None,
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
                towards, batches the conditional and the null pass into one forward pass of 2B images. None: the
                scheduler's recipe (`sampling_defaults`; 1.5 in the recipe training saves) on a model with a
                context, 1.0 on an unconditional one.
            num_inference_steps: denoising steps; None = the scheduler's recipe (`sampling_defaults`: 25 in the
                recipe training saves; without a recipe every training step for DDPM schedulers, 50 for others).
            eta: DDIM's noise scale (0 deterministic, 1 DDPM-like); only for schedulers whose step takes eta.
                None = the scheduler's recipe (0 unless it says otherwise).
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
        # 1. the scheduler's recipe for every sampling keyword not given, then every input checked before any work
        defaults = self.sampling_defaults
        num_inference_steps = defaults["num_inference_steps"] if num_inference_steps is None else num_inference_steps
        eta = defaults["eta"] if eta is None else eta
        if guidance_scale is None:  # the recipe's w where there is a context to guide; a no-op pass-through elsewhere
            guidance_scale = defaults["guidance_scale"] if self.unet.config.context_dim is not None else 1.0
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

        # 2. context c for each image, and the null (or negative) context for the unconditional half of guidance
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

        # 3. timesteps, 4. x_T
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
                null, cond = model_output.chunk(2)
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
