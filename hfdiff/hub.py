"""Model cards and uploads for saved pipelines (huggingface_hub's ModelCard, create_repo and upload_folder).

`upload_pipeline_folder` is the one upload path: `SpriteDiffusionPipeline.push_to_hub`,
`save_pretrained(push_to_hub=True)` and training's --push_to_hub all send exactly `pipeline_files(folder)`: the files
the last save wrote, as its manifest records them (`hfdiff.folder_swap.MANIFEST`), never the checkpoints, logs or
validation images that training keeps beside a pipeline, nor a file the user put or changed there since.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.utils import logging

from hfdiff.folder_swap import MANIFEST, read_manifest, unchanged

logger = logging.get_logger(__name__)

UPLOAD_KEYS = ("repo_id", "commit_message", "private", "token", "create_pr")  # save_pretrained(push_to_hub=True)


def pop_upload_kwargs(kwargs: dict, default_repo_id: str) -> dict:
    """save_pretrained(push_to_hub=True)'s upload keywords, as DiffusionPipeline.save_pretrained takes them."""
    upload = {key: kwargs.pop(key) for key in UPLOAD_KEYS if key in kwargs}
    upload.setdefault("repo_id", default_repo_id)
    return upload


def check_repo_id(repo_id: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"repo_id {repo_id!r} is not a valid Hub repo id ({error}); use 'user/model-name'.") from None


def pipeline_files(folder: str | os.PathLike) -> list[str]:
    """The files of the pipeline saved in `folder`, relative to it: exactly those the last save wrote, as its
    manifest records them, each still the regular file it wrote (same size and SHA-256, not a symbolic link).
    Checkpoints, logs and validation images that training keeps beside them, and anything else put there since, are
    left out. A listed file that changed, or a folder no hfdiff save wrote, raises a ValueError naming it."""
    folder = Path(folder)
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise FileNotFoundError(
            f"{index_path} does not exist: {folder} is not a saved pipeline folder (save one with "
            "pipe.save_pretrained(path), or train one with train_conditional.py)."
        )
    manifest = read_manifest(folder)
    if manifest is None:
        raise ValueError(
            f"{folder} has no record of what was saved there ({MANIFEST}), so what to upload is not known: load it "
            "and save it again with hfdiff (SpriteDiffusionPipeline.from_pretrained(folder).save_pretrained(folder))."
        )
    changed = [name for name, record in manifest.items() if not unchanged(folder, name, record)]
    if changed:
        raise ValueError(
            f"{folder}: {', '.join(changed)} changed since the pipeline was saved there (edited, replaced or made a "
            "symbolic link), and only what the save wrote is uploaded. Save the pipeline again, or put the file back."
        )
    return sorted(manifest)


def left_out_files(folder: str | os.PathLike, files: Sequence[str]) -> list[str]:
    """Files beside the pipeline that an upload leaves out although they look like part of it: top-level files and
    files inside component folders that the last save did not write (training's checkpoint, logs and validation
    folders excepted, which are never part of a pipeline)."""
    folder, files = Path(folder), set(files)
    components = {name.split("/")[0] for name in files if "/" in name}
    found = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.name in files:
            continue
        if path.is_symlink() or path.is_file():
            found.append(path.name)
        elif path.name in components:
            found += [f"{path.name}/{p.name}" for p in sorted(path.iterdir()) if f"{path.name}/{p.name}" not in files]
    return found


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
    it, which must be regular files) to the Hub repo `repo_id`, created if needed, with huggingface_hub's create_repo
    + upload_folder: the one upload path of `push_to_hub`, `save_pretrained(push_to_hub=True)` and training's
    --push_to_hub. The files are copied, without following links, into a temporary folder and checked against the
    manifest there, and that folder is what is sent: a file changed or swapped for a link after the check is not
    sent. Files that look like part of the pipeline but were not saved with it are named in a warning. Returns the
    URL of the commit."""
    from huggingface_hub import HfApi

    from hfdiff.folder_swap import file_digest

    check_repo_id(repo_id)
    folder = Path(folder)
    manifest = read_manifest(folder) or {}
    files = pipeline_files(folder)
    extra = [name for name in extra_files if name not in files]
    for name in extra:
        if (folder / name).is_symlink() or not (folder / name).is_file():
            raise ValueError(f"extra file {name} in {folder} is not a regular file; pass a file, not a link.")
    left_out = left_out_files(folder, [*files, *extra])
    if left_out:
        logger.warning(f"Not uploaded (not written by the last save into {folder}): {', '.join(left_out)}.")
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory() as copy:
        for name in [*files, *extra]:
            (Path(copy) / name).parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(folder / name, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            with os.fdopen(fd, "rb") as source, open(Path(copy) / name, "wb") as destination:
                shutil.copyfileobj(source, destination)
            if name in manifest and file_digest(Path(copy) / name) != manifest[name]:
                raise ValueError(f"{folder / name} changed while it was being uploaded; save the pipeline again.")
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=copy,
            path_in_repo=path_in_repo,
            allow_patterns=[glob.escape(name) for name in [*files, *extra]],  # exact names: no pattern widens it
            commit_message=commit_message or "Upload SpriteDiffusionPipeline trained with hfdiff",
            create_pr=create_pr,
        )
    return str(getattr(commit, "commit_url", commit))


def push_pipeline(
    pipe,
    repo_id: str,
    commit_message: str | None = None,
    private: bool | None = None,
    token: str | None = None,
    create_pr: bool = False,
    safe_serialization: bool = True,
    variant: str | None = None,
    subfolder: str | None = None,
    model_card=None,
    extra_files: Sequence[str | os.PathLike] = (),
    demo_app: bool = False,
) -> str:
    """`SpriteDiffusionPipeline.push_to_hub`: save `pipe` (`pipe.save_pretrained`: safetensors, exported code, model
    card) into a temporary folder and upload exactly its pipeline files, with `extra_files` copied in beside them, to
    `repo_id` (into `subfolder` of the repo when given). Returns the URL of the commit."""
    check_repo_id(repo_id)
    with tempfile.TemporaryDirectory() as folder:
        pipe.save_pretrained(
            folder, safe_serialization=safe_serialization, variant=variant, model_card=model_card, demo_app=demo_app
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


CARD_TEMPLATE = """\
---
{{ card_data }}
---

# {{ title }}

A small diffusion model trained with [hfdiff](https://pypi.org/project/hfdiff/): a `ContextUNet2DModel` (a diffusers
`UNet2DModel` whose decoder multiplies in a context embedding and adds a time embedding before every up block) with a
`{{ scheduler_class }}`.

{% if samples_file %}![samples]({{ samples_file }})

{% endif %}- Images: {{ resolution }}x{{ resolution }}, {{ channels }} channel(s)
- Conditioning: {{ conditioning }}
- Parameters: {{ num_parameters }}
- Noise schedule: {{ num_train_timesteps }} steps, `{{ beta_schedule }}` betas, predicts `{{ prediction_type }}`
- Sampling by default: {{ sampling }}; `hfdiff.samplers.with_sampler(pipe, "ddpm")` gives the course's DDPM over
  every step

## Use it

With hfdiff installed (no remote code runs):

```python
from hfdiff import SpriteDiffusionPipeline

pipe = SpriteDiffusionPipeline.from_pretrained("{{ repo_id }}")
images = pipe({% if text %}prompt="a green slime monster", num_images_per_prompt=4{% else %}batch_size=4{% if first_class %}, class_labels="{{ first_class }}"{% endif %}{% endif %}).images
```

With diffusers alone: the pipeline, UNet and scheduler code travels in this repository, so loading it runs that code
and needs your consent:

```python
from diffusers import DiffusionPipeline

pipe = DiffusionPipeline.from_pretrained("{{ repo_id }}", trust_remote_code=True)
```
{% if demo_app %}
## Try it in the browser

`app.py` beside the weights is a Gradio demo of this model (class, mixture{% if text %}, prompt{% endif %}, sampler,
steps, seed; the denoising GIF): `pip install -r requirements.txt && python app.py`, or `hfdiff demo {{ repo_id }}`
with hfdiff installed. The folder runs as a Hugging Face Space as it is (this card's `sdk: gradio` and `app_file`
say how): in this folder, `hf upload <user>/<space-name> . --repo-type space`.
{% endif %}{% if metrics %}
## Metrics

| metric | value |
| --- | --- |
{% for key, value in metrics.items() %}| {{ key }} | {{ value }} |
{% endfor %}{% endif %}{% if training_config %}
## Training configuration

```json
{{ training_config }}
```
{% endif %}"""


def _conditioning(unet_config, class_names, text_encoder) -> tuple[str, str | None, str]:
    """(what the card says the model is conditioned on, its pipeline_tag, its kind tag). The Hub's tasks have
    "unconditional-image-generation" and "text-to-image" but nothing for class-conditional generation: such a model
    gets no pipeline_tag (which would file it under the wrong task) and says what it is in its tags instead."""
    if unet_config.context_dim is None:
        return "none (unconditional)", "unconditional-image-generation", "unconditional-image-generation"
    everywhere = ""
    if unet_config.get("context_time_embedding"):  # beside the decoder's multiply
        everywhere = "; the context also joins every resnet's time embedding"
    if text_encoder is not None:
        what = (
            f"text: one sentence embedding ({unet_config.context_dim}-d) from a frozen {type(text_encoder).__name__}"
        )
        return what + everywhere, "text-to-image", "text-to-image"
    if class_names:
        what = f"one-hot classes ({', '.join(class_names)}); mixtures and classifier-free guidance work"
        return what + everywhere, None, "class-conditional-image-generation"
    what = f"context vectors of length {unet_config.context_dim}{everywhere}"
    return what, None, "context-conditional-image-generation"


def _space_metadata() -> dict:
    """A Space's README keys (huggingface.co/docs/hub/spaces-config-reference) for the folder's app.py: the gradio
    version installed here, so the Space runs the version the app was written with."""
    from importlib.metadata import PackageNotFoundError, version

    metadata = {"sdk": "gradio", "app_file": "app.py"}
    try:
        metadata["sdk_version"] = version("gradio")
    except PackageNotFoundError:  # the Space then picks its default gradio
        pass
    return metadata


def _sampling(pipe) -> str:
    """The pipeline's sampling defaults (its scheduler's recipe) in words, for the card."""
    defaults = pipe.sampling_defaults
    name = f"{defaults['sampler']} " if defaults["sampler"] else ""
    guided = f", guidance {defaults['guidance_scale']:g}" if pipe.unet.config.context_dim is not None else ""
    return f"{name}(`{type(pipe.scheduler).__name__}`), {defaults['num_inference_steps']} steps{guided}"


def build_model_card(
    pipe,
    repo_id: str | None = None,
    training_config: dict | None = None,
    metrics: dict | None = None,
    samples_file: str | None = None,
    license: str = "apache-2.0",
    demo_app: bool = False,
) -> ModelCard:
    """A README.md for a saved pipeline: YAML metadata (library_name diffusers, tags, pipeline_tag, license), the
    class names, the architecture and schedule, the sample grid (`samples_file`, relative to the folder), metrics
    and the training configuration when known, and how to load it with and without hfdiff. `demo_app`: the folder
    holds the app.py of `hfdiff.demo_app`; the card says how to run it, and its Space metadata (sdk, app_file) lets the folder
    run as a Hub Space."""
    unet_config, scheduler_config = pipe.unet.config, pipe.scheduler.config
    class_names = pipe.class_names
    text_encoder = getattr(pipe, "text_encoder", None)
    conditioning, pipeline_tag, kind_tag = _conditioning(unet_config, class_names, text_encoder)
    tags = ["hfdiff", "diffusers", "diffusion", "pixel-art", kind_tag]
    card_data = ModelCardData(
        library_name="diffusers",
        pipeline_tag=pipeline_tag,
        license=license,
        tags=tags,
        metrics=sorted(metrics) if metrics else None,
        **(_space_metadata() if demo_app else {}),
    )
    sample_size = unet_config.sample_size
    return ModelCard.from_template(
        card_data,
        template_str=CARD_TEMPLATE,
        title=f"{repo_id.split('/')[-1] if repo_id else 'Sprite diffusion model'}",
        repo_id=repo_id or "path/to/this/folder",
        scheduler_class=type(pipe.scheduler).__name__,
        samples_file=samples_file,
        resolution=sample_size if isinstance(sample_size, int) else "x".join(map(str, sample_size)),
        channels=unet_config.in_channels,
        conditioning=conditioning,
        num_parameters=f"{sum(p.numel() for p in pipe.unet.parameters()):,}",
        num_train_timesteps=scheduler_config.num_train_timesteps,
        beta_schedule=scheduler_config.beta_schedule,
        prediction_type=scheduler_config.prediction_type,
        sampling=_sampling(pipe),
        first_class=class_names[0] if class_names else None,
        text=text_encoder is not None,
        metrics=metrics,
        demo_app=demo_app,
        training_config=json.dumps(public_config(training_config), indent=2, default=str) if training_config else None,
    )


# Training config entries that name places on the trainer's machine, not what the model is.
LOCAL_PLACES = ("output_dir", "logging_dir", "resume_from_checkpoint")


def public_config(training_config: dict) -> dict:
    """The training configuration as a published card shows it: entries that name where things were on the
    trainer's machine (--output_dir, --logging_dir, checkpoints) are left out, and a local data or encoder path
    (--train_data_dir, a save_to_disk --dataset_name, --sprites_npy, a local --text_encoder_name_or_path) becomes
    "local: <its last name>", which says what the data was without the user's file system."""
    public = {}
    for key, value in training_config.items():
        if key in LOCAL_PLACES:
            continue
        if isinstance(value, str) and (os.path.isabs(value) or os.path.exists(value)):
            value = f"local: {os.path.basename(os.path.normpath(value))}"
        public[key] = value
    return public
