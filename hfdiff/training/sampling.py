"""What training shows and leaves behind: validation grids from the EMA weights, and the final pipeline folder."""

from __future__ import annotations

import PIL.Image
import torch

from hfdiff.visualize import UNCONDITIONAL_ROWS, grid_labels, labelled_rows, upscale  # grids look like the CLI's

GRID_CELL = 64  # small images are upscaled (nearest neighbour) to at least this many pixels a side


def weights_copy(unet: torch.nn.Module, ema=None) -> torch.nn.Module:
    """A fresh fp32 copy of `unet` (same config) holding the EMA weights, or `unet`'s own when `ema` is None.

    A copy rather than ema.store/copy_to/restore: the training model stays untouched (its autocast wrapper, memory
    format, compiled graph and DDP buckets included), and the copy can be saved as it is."""
    copy = type(unet).from_config(unet.config)
    copy.load_state_dict({name: tensor.float() for name, tensor in unet.state_dict().items()})
    if ema is not None:
        ema.copy_to(copy.parameters())
    return copy.to(next(unet.parameters()).device).eval()


def sample_grid(
    pipe, per_row: int, seed: int, num_inference_steps: int | None = None, prompts: list[str] | None = None
) -> PIL.Image.Image:
    """A grid of samples from a fixed seed, drawn and labelled as the CLI's grids (hfdiff.visualize.labelled_rows):
    a row per prompt (text models) or per class (its name from the UNet's config, as `grid_labels` gives it), or
    UNCONDITIONAL_ROWS unlabelled rows. Sampled with the pipeline's defaults (its scheduler's recipe) except
    `num_inference_steps` when given."""
    indices, labels = grid_labels(pipe)
    conditioning = {}
    if prompts is not None:
        rows, labels = len(prompts), list(prompts)
        conditioning["prompt"] = [prompt for prompt in prompts for _ in range(per_row)]
    elif indices is not None:
        rows = len(indices)
        conditioning["class_labels"] = [k for k in indices for _ in range(per_row)]
    else:
        rows = UNCONDITIONAL_ROWS
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        batch_size=rows * per_row,
        num_inference_steps=num_inference_steps,
        generator=torch.Generator("cpu").manual_seed(seed),  # CPU: the same grid on every device
        **conditioning,
    ).images
    images = upscale(images, scale=max(1, GRID_CELL // max(images[0].size)))
    return labelled_rows([images[r * per_row : (r + 1) * per_row] for r in range(rows)], labels)


def save_pipeline(pipe, output_dir: str, samples: PIL.Image.Image, training_config: dict | None = None) -> None:
    """The pipeline with a model card that shows samples.png and the training configuration, samples.png saved
    with it (`hfdiff.folder_saving.save_folder`: staged, recorded in the save's manifest, swapped in with
    model_index.json last, so a save cut short leaves the previous pipeline or none, never a mix). A write that fails
    raises the save's OSError (the cause and the fix) and leaves the folder as it was."""
    from hfdiff.folder_saving import save_folder
    from hfdiff.hub import build_model_card

    card = build_model_card(pipe, training_config=training_config, samples_file="samples.png")
    save_folder(pipe, output_dir, model_card=card, extra_files={"samples.png": lambda path: samples.save(path, "PNG")})


def log_image(accelerator, name: str, image: PIL.Image.Image, step: int) -> None:
    """Send one image to every tracker that takes images (tensorboard, wandb)."""
    import numpy as np

    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.log_images({name: np.asarray(image)[None]}, step=step, dataformats="NHWC")
        elif tracker.name == "wandb":
            tracker.log_images({name: [image]}, step=step)
