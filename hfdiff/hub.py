"""Model cards and uploads for saved pipelines (huggingface_hub's ModelCard, create_repo and upload_folder)."""

from __future__ import annotations

import json

from huggingface_hub import ModelCard, ModelCardData

# The one upload path lives with the pipeline (it travels as code to diffusers-only users): re-exported here under
# the names training and earlier releases use. `push_pipeline_folder(folder, repo_id, private, token, commit_message,
# create_pr)` uploads exactly the pipeline files of a saved folder, without checkpoints, logs or validation images.
from hfdiff.pipelines.pipeline_sprite_diffusion import pipeline_files
from hfdiff.pipelines.pipeline_sprite_diffusion import upload_pipeline_folder as push_pipeline_folder

__all__ = ["build_model_card", "pipeline_files", "push_pipeline_folder"]

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
    holds hfdiff.demo's app.py; the card says how to run it, and its Space metadata (sdk, app_file) lets the folder
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
        training_config=json.dumps(training_config, indent=2, default=str) if training_config else None,
    )
