"""Decoding images and labels into training tensors: the helpers that the resident data path (`data.py`) and the
streamed one (`streaming.py`) share, so that both turn a row into the same (C, H, W) uint8 image and int64 label."""

from __future__ import annotations

import logging

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

# PIL modes of one-channel images: a set whose images all have one of these trains on one channel.
GRAYSCALE_MODES = {"1", "L", "LA", "I", "I;16", "F"}


def resize_images(images: torch.Tensor, resolution: int, center_crop: bool = True) -> torch.Tensor:
    """(N, C, H, W) uint8 -> (N, C, resolution, resolution) uint8: centre crop to a square, then resize (the same as
    diffusers' Resize(resolution) + CenterCrop(resolution), up to rounding); `center_crop=False` resizes the whole
    image, changing its aspect ratio where it is not square.

    Whole-number upscaling repeats pixels (pixel art stays crisp); anything else is antialiased bilinear."""
    height, width = images.shape[2:]
    if center_crop:
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        images = images[:, :, top : top + side, left : left + side]
        height = width = side
    if height == width == resolution:
        return images.contiguous()
    if resolution % height == 0 and resolution % width == 0:
        return images.repeat_interleave(resolution // height, dim=2).repeat_interleave(resolution // width, dim=3)
    resized = F.interpolate(images.float(), size=(resolution, resolution), mode="bilinear", antialias=True)
    return resized.round().clamp(0, 255).to(torch.uint8)


def nhwc_to_tensor(array: np.ndarray) -> torch.Tensor:
    """(N, H, W, C) or (N, H, W) uint8 array -> (N, C, H, W) uint8 tensor."""
    if array.ndim == 3:
        array = array[..., None]
    array = np.ascontiguousarray(array)
    if not array.flags.writeable:  # e.g. a read-only memory map; torch wants memory it may write
        array = array.copy()
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


def first_few(names: list[str], count: int = 5) -> str:
    return ", ".join(names[:count]) + (f" and {len(names) - count} more" if len(names) > count else "")


def class_labels(values: list, names: list[str], column: str, flag: str, rows_of: str = "") -> torch.Tensor:
    """A ClassLabel column's values -> (N,) int64, each in 0..K-1 (the map-style load checks all at once, a stream
    each batch as it is decoded: `rows_of` says so in the message, since its row numbers count from the batch)."""
    labels = torch.tensor(values, dtype=torch.int64)
    outside = ((labels < 0) | (labels >= len(names))).nonzero()
    if len(outside):
        row = int(outside[0])
        raise ValueError(
            f"--label_column {column!r} of {flag} has {len(outside)} label(s) outside 0..{len(names) - 1} (row {row}"
            f"{rows_of}: {values[row]}; `datasets` writes -1 for a missing label). Keep only labelled rows, e.g. "
            f"dataset.filter(lambda row: row[{column!r}] >= 0), or train without labels with train_unconditional.py."
        )
    return labels


def to_pil(value, flag: str) -> PIL.Image.Image:
    if isinstance(value, PIL.Image.Image):
        return value
    array = np.asarray(value)
    if array.dtype.kind in "iu" and array.size and array.min() >= 0 and array.max() <= 255:
        array = array.astype(np.uint8)  # arrays stored as lists come back as int64
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (1, 3, 4)):
        raise ValueError(
            f"{flag} has an image of dtype {array.dtype} and shape {array.shape}; expected PIL images or arrays of "
            "integers in 0..255 of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)."
        )
    return PIL.Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array)


def convert_image(image: PIL.Image.Image, mode: str) -> np.ndarray:
    """PIL image -> (H, W) or (H, W, 3) uint8 in `mode` ("L" or "RGB"), transparent pixels composited on white."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = PIL.Image.alpha_composite(PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return np.asarray(image.convert(mode))


def image_name(image: PIL.Image.Image) -> str:
    """The file an image was read from (PIL keeps it when it opened a path), for messages; else its size and mode."""
    return getattr(image, "filename", "") or f"a {image.width}x{image.height} {image.mode} image"


def decode_to_tensor(
    pils: list[PIL.Image.Image], resolution: int | None, flag: str, mode: str | None = None, center_crop: bool = True
) -> torch.Tensor:
    """Decoded images -> (N, C, H, W) uint8 in `mode` (default: one channel if all are grayscale, RGB otherwise, the
    grayscale ones then with three equal channels, logged); one size, or --resolution (the caller resizes a set of one
    size)."""
    grey = sum(image.mode in GRAYSCALE_MODES for image in pils)
    if mode is None:
        mode = "L" if grey == len(pils) else "RGB"
        if 0 < grey < len(pils):
            logger.info(
                "%s mixes %d grayscale and %d colour images (e.g. %s and %s): training on all of them as RGB, the "
                "grayscale ones with three equal channels.",
                flag,
                grey,
                len(pils) - grey,
                image_name(next(image for image in pils if image.mode in GRAYSCALE_MODES)),
                image_name(next(image for image in pils if image.mode not in GRAYSCALE_MODES)),
            )
    sizes = {image.size for image in pils}
    if len(sizes) > 1 and resolution is None:
        (w0, h0), (w1, h1) = sorted(sizes)[:2]
        first = {
            size: image_name(next(image for image in pils if image.size == size)) for size in ((w0, h0), (w1, h1))
        }
        raise ValueError(
            f"{flag} has images of {len(sizes)} different sizes (e.g. {w0}x{h0}: {first[w0, h0]}; {w1}x{h1}: "
            f"{first[w1, h1]}); pass --resolution (e.g. --resolution {max(min(h0, w0), min(h1, w1))}) to resize them "
            "all to one square size at load time."
        )
    if len(sizes) == 1:
        return nhwc_to_tensor(np.stack([convert_image(image, mode) for image in pils]))
    # Mixed sizes: bring each image to the target size on its own before stacking.
    return torch.cat(
        [resize_images(nhwc_to_tensor(convert_image(image, mode)[None]), resolution, center_crop) for image in pils]
    )
