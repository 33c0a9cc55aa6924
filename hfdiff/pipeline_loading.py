"""The pipeline that the command line (`hfdiff sample`, `hfdiff report`, ...) and the demo work on: a saved folder or
a Hub repo id, loaded onto a device, with one clear FileNotFoundError when it is neither."""

from __future__ import annotations

import os

from hfdiff.local_paths import looks_like_local_path


def load_pipeline(model: str | os.PathLike, device: str | None = None):
    """The SpriteDiffusionPipeline in a local folder, or in a Hub repo id "owner/name" (from the HF cache under
    HF_HUB_OFFLINE=1), on `device` (None: CUDA where there is one). torch and diffusers are imported here, on first
    use, so that `hfdiff --help` and the CLI's argument errors stay instant."""
    import torch

    from hfdiff.pipelines import SpriteDiffusionPipeline

    path = str(model)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if not os.path.isdir(path):
        if os.path.exists(path) or looks_like_local_path(path) or "/" not in path:  # the CLI's Hub ids have an owner
            raise FileNotFoundError(
                f"Pipeline folder {path!r} does not exist; pass the --output_dir of train_conditional.py (or a "
                "folder written by pipe.save_pretrained)."
            )
        try:
            return SpriteDiffusionPipeline.from_pretrained(path).to(device)
        except Exception as error:  # offline, no such repo, ...: one clear message
            raise FileNotFoundError(
                f"{path!r} is neither a local pipeline folder nor a Hub repo that could be loaded ({error})."
            ) from error
    return SpriteDiffusionPipeline.from_pretrained(path).to(device)
