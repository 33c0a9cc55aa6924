"""The two data paths of training, and the streaming one's pieces.

- **Device-resident** (the fast path): the whole set decoded once into one (N, C, H, W) uint8 tensor on the device;
  each step gathers its batch there (step.py `get_batch`). 89,400 sprites are 69 MB.
- **Streaming**: the set stays where it is (a `datasets` table on disk, or the compact generated array), and
  DataLoader worker processes decode, crop and resize just the rows of each batch into pinned host memory; the step
  copies the batch to the device asynchronously. Nothing ever holds the whole decoded set.

`data.load_training_data` picks the path: resident when the decoded size (N x C x H x W bytes) fits the `DataBudget`
(`--device_data_budget_mb`, or `data_budget`'s auto value), streaming otherwise, and logs which and why.

Both paths train on the same batches in the same order: `EpochBatchSampler` hands the workers exactly the index
batches `EpochBatches` gives the step, a function of (seed, epoch, rank), so resuming is exact on both and DDP shards
the same way. Augmentation (--random_flip) happens in the step on the device, so it means the same on both paths.
"""

from __future__ import annotations

import abc
import logging
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.utils.data

from .data import _GRAYSCALE_MODES, _first_few, _images, _nhwc_to_tensor, _to_pil, resize_images

logger = logging.getLogger(__name__)

# The resident path decodes the whole set in host memory before moving it, and the device also needs room for the
# model, activations and optimizer: a quarter of what is free leaves both.
AUTO_BUDGET_FRACTION = 0.25


@dataclass
class DataBudget:
    """How many bytes of decoded images may stay on the device, and where that number came from (for the log)."""

    bytes: int
    source: str


def data_budget(budget_mb: float | None, device: torch.device) -> DataBudget:
    """--device_data_budget_mb, or the auto budget: 25% of the free memory of a CUDA device (at most half the available
    host memory, where the resident path decodes first), or 25% of the available host memory on CPU."""
    if budget_mb is not None:
        return DataBudget(int(budget_mb * 2**20), f"--device_data_budget_mb {budget_mb:g}")
    import psutil

    host = psutil.virtual_memory().available
    if torch.device(device).type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = min(int(free * AUTO_BUDGET_FRACTION), host // 2)
        return DataBudget(budget, f"auto: 25% of {free / 2**20:,.0f} MB free on {device}, at most half of "
                          f"{host / 2**20:,.0f} MB available host memory")  # fmt: skip
    return DataBudget(int(host * AUTO_BUDGET_FRACTION), f"auto: 25% of {host / 2**20:,.0f} MB available host memory")


def streams(num_images: int, image_shape: tuple[int, ...], budget: DataBudget | None, description: str) -> bool:
    """Whether the set of `num_images` decoded (C, H, W) uint8 images must stream; logs the choice and why."""
    if budget is None:  # callers that want the decoded tensor itself (tests, tools)
        return False
    size = num_images * math.prod(image_shape)
    stream = size > budget.bytes
    logger.info(
        "%s: %s data path: the decoded set is %s MB (%d x %s uint8), %s the budget of %s MB (%s).",
        description,
        "streaming" if stream else "device-resident",
        f"{size / 2**20:,.1f}",
        num_images,
        "x".join(map(str, image_shape)),
        "over" if stream else "within",
        f"{budget.bytes / 2**20:,.1f}",
        budget.source,
    )
    return stream


# ----------------------------------------------------------------------------------------------------------------
# images decoded on demand
# ----------------------------------------------------------------------------------------------------------------


class StreamedImages(abc.ABC, torch.utils.data.Dataset):
    """A set's images decoded on demand. Where training reads the resident tensor (len, .shape, .dtype, [i]) this
    reads the same; `[indices]` (a 1-D index tensor, one batch) is what the DataLoader's workers call."""

    dtype = torch.uint8

    def __init__(self, shape: tuple[int, int, int, int]):
        self.shape = torch.Size(shape)  # (N, C, H, W) after --resolution

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, (int, np.integer)):
            return self.rows([int(index)])[0]  # (C, H, W)
        return self.rows(torch.as_tensor(index).tolist())  # (B, C, H, W)

    def _finish(self, images: torch.Tensor, rows: list[int]) -> torch.Tensor:
        """A decoded batch brought to the set's shape, as load time does for the resident tensor."""
        resolution = self.shape[2]
        if self.resolution is not None and images.shape[2:] != (resolution, resolution):
            images = resize_images(images, resolution, self.center_crop)
        if images.shape[1:] != self.shape[1:]:
            raise ValueError(
                f"Row {rows[0]} or a neighbour decodes to {tuple(images.shape[1:])} where the first image gave "
                f"{tuple(self.shape[1:])}; pass --resolution to bring every image to one size."
            )
        return images.contiguous()

    @abc.abstractmethod
    def rows(self, indices: list[int]) -> torch.Tensor:
        """(len(indices), C, H, W) uint8."""


class ArrayImages(StreamedImages):
    """Images of a compact host array (the generated sprites, 768 bytes each at 16x16), cropped and resized per batch:
    the set upscaled to --resolution is what does not fit."""

    def __init__(self, array: np.ndarray, resolution: int | None, center_crop: bool):
        self.array, self.resolution, self.center_crop = array, resolution, center_crop
        channels = 1 if array.ndim == 3 else array.shape[3]
        size = array.shape[1:3] if resolution is None else (resolution, resolution)
        super().__init__((len(array), channels, *size))

    def rows(self, indices: list[int]) -> torch.Tensor:
        return self._finish(_nhwc_to_tensor(self.array[np.asarray(indices, dtype=np.int64)]), indices)


class DatasetImages(StreamedImages):
    """The image column of a `datasets.Dataset`, decoded a batch of rows at a time (Arrow memory-maps the table, so
    the workers share it without copying). The first row decides the mode (one channel if it is grayscale, else RGB)
    and, without --resolution, the size; a row that does not decode stops training with its name, since the resident
    path's skipping would change N after the run has started."""

    def __init__(self, dataset, column: str, flag: str, resolution: int | None, center_crop: bool):
        import datasets

        if isinstance(dataset, datasets.IterableDataset) or not hasattr(dataset, "__len__"):
            raise ValueError(
                f"{flag} is a streaming data set without a length; hfdiff streams batches from a map-style Dataset "
                "(its data order is a function of the row count). Load it without streaming=True, or save it with "
                "save_to_disk and pass that folder."
            )
        self.feature = dataset.features[column]
        self.encoded = isinstance(self.feature, datasets.Image) and self.feature.decode
        dataset = dataset.select_columns([column])
        if self.encoded:  # decoded here, so that a bad file is named
            dataset = dataset.cast_column(column, datasets.Image(decode=False))
        self.dataset, self.column, self.flag = dataset, column, flag
        self.resolution, self.center_crop = resolution, center_crop
        first = self._decode(0, dataset[0][column])
        self.mode = "L" if first.mode in _GRAYSCALE_MODES else "RGB"
        channels = 1 if self.mode == "L" else 3
        size = (first.height, first.width) if resolution is None else (resolution, resolution)
        super().__init__((len(dataset), channels, *size))

    def _decode(self, row: int, value):
        if not self.encoded:
            return _to_pil(value, self.flag)
        try:
            return self.feature.decode_example(value)
        except (OSError, SyntaxError, ValueError, EOFError) as error:
            raise ValueError(
                f"{self.flag}: image {value.get('path') or f'row {row}'} could not be read ({type(error).__name__}: "
                f"{error}). The streaming data path cannot skip it; delete or replace it, or raise "
                "--device_data_budget_mb so that the set is decoded up front (which skips unreadable images)."
            ) from None

    def rows(self, indices: list[int]) -> torch.Tensor:
        values = self.dataset[indices][self.column]
        pils = [self._decode(row, value) for row, value in zip(indices, values)]
        images = _images(pils, self.resolution, self.flag, mode=self.mode, center_crop=self.center_crop)
        return self._finish(images, indices)


# ----------------------------------------------------------------------------------------------------------------
# the DataLoader
# ----------------------------------------------------------------------------------------------------------------


class EpochBatchSampler(torch.utils.data.Sampler):
    """The workers' index batches: EpochBatches' own, from optimizer step `start_step` on (on the CPU)."""

    def __init__(self, batches, start_step: int, num_epochs: int):
        self.batches, self.start_step, self.num_epochs = batches, start_step, num_epochs

    def __iter__(self) -> Iterator[torch.Tensor]:
        for _, _, indices in self.batches.iterate(self.start_step, self.num_epochs, device="cpu"):
            yield indices


def default_num_workers() -> int:
    """The CPU cores of this training process (the machine's split between a launch's local processes), at most 8."""
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(8, (os.cpu_count() or 1) // local_processes))


def batch_loader(images: StreamedImages, batches, start_step: int, num_epochs: int, num_workers: int | None, device):
    """A DataLoader yielding each micro-batch's (B, C, H, W) uint8 images in EpochBatches' order; pinned on CUDA so
    that the step's copy to the device is asynchronous."""
    num_workers = default_num_workers() if num_workers is None else num_workers
    logger.info("Streaming batches from %d DataLoader worker process(es).", num_workers)
    return torch.utils.data.DataLoader(
        images,
        batch_size=None,  # the sampler's items are whole batches, decoded by one __getitem__ call
        sampler=EpochBatchSampler(batches, start_step, num_epochs),
        num_workers=num_workers,
        pin_memory=torch.device(device).type == "cuda",
        # torch's default of 2 batches ahead per worker: each waits in shared memory (/dev/shm, 64 MB in a default
        # Docker container), 12.6 MB for 1,024 RGB images at 64x64
        prefetch_factor=2 if num_workers else None,
    )


# ----------------------------------------------------------------------------------------------------------------
# augmentation checks
# ----------------------------------------------------------------------------------------------------------------

_DIRECTIONAL = re.compile(r"\b(side|left|right|facing)\b", re.IGNORECASE)  # whole words: not "bright", "inside"


def warn_direction_dependent(random_flip: bool, class_names: list[str] | None, captions: list[str] | None) -> None:
    """--random_flip mirrors images without touching their labels: warn when a class or caption names a direction
    (the embedded sprites' side-facing class), whose flipped images would teach the wrong thing."""
    if not random_flip:
        return
    named = [name for name in class_names or [] if _DIRECTIONAL.search(name)]
    named += [caption for caption in dict.fromkeys(captions or []) if _DIRECTIONAL.search(caption)][:3]
    if named:
        logger.warning(
            "--random_flip mirrors images but not their classes or captions, and %s name a direction; flipped "
            "images of them teach the model the opposite direction. Drop --random_flip for such data.",
            _first_few([repr(name) for name in named], 3),
        )
