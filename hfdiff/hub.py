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

## Use it

With hfdiff installed (no remote code runs):

```python
from hfdiff import SpriteDiffusionPipeline

pipe = SpriteDiffusionPipeline.from_pretrained("{{ repo_id }}")
images = pipe(batch_size=4{% if first_class %}, class_labels="{{ first_class }}"{% endif %}).images
```

With diffusers alone: the pipeline, UNet and scheduler code travels in this repository, so loading it runs that code
and needs your consent:

```python
from diffusers import DiffusionPipeline

pipe = DiffusionPipeline.from_pretrained("{{ repo_id }}", trust_remote_code=True)
```
{% if metrics %}
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


def build_model_card(
    pipe,
    repo_id: str | None = None,
    training_config: dict | None = None,
    metrics: dict | None = None,
    samples_file: str | None = None,
    license: str = "apache-2.0",
) -> ModelCard:
    """A README.md for a saved pipeline: YAML metadata (library_name diffusers, tags, pipeline_tag, license), the
    class names, the architecture and schedule, the sample grid (`samples_file`, relative to the folder), metrics
    and the training configuration when known, and how to load it with and without hfdiff."""
    unet_config, scheduler_config = pipe.unet.config, pipe.scheduler.config
    class_names = pipe.class_names
    if unet_config.context_dim is None:
        conditioning = "none (unconditional)"
    elif class_names:
        conditioning = f"one-hot classes ({', '.join(class_names)}); mixtures and classifier-free guidance work"
    else:
        conditioning = f"context vectors of length {unet_config.context_dim}"
    # The Hub's tasks have "unconditional-image-generation" and "text-to-image" but nothing for class-conditional
    # generation: such a model gets no pipeline_tag (which would file it under the wrong task) and says what it is
    # in its tags instead.
    tags = ["hfdiff", "diffusers", "diffusion", "pixel-art"]
    if unet_config.context_dim is None:
        pipeline_tag = "unconditional-image-generation"
        tags.append(pipeline_tag)
    elif class_names:
        pipeline_tag = None
        tags.append("class-conditional-image-generation")
    else:
        pipeline_tag = None
        tags.append("context-conditional-image-generation")
    card_data = ModelCardData(
        library_name="diffusers",
        pipeline_tag=pipeline_tag,
        license=license,
        tags=tags,
        metrics=sorted(metrics) if metrics else None,
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
        first_class=class_names[0] if class_names else None,
        metrics=metrics,
        training_config=json.dumps(training_config, indent=2, default=str) if training_config else None,
    )
