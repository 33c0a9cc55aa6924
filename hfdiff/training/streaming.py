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
import itertools
import logging
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.utils.data

from .decoding import GRAYSCALE_MODES, class_labels, decode_to_tensor, first_few, nhwc_to_tensor, resize_images, to_pil

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
    has_length = True  # False for a stream (IterableImages), whose number of images is unknown

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
        return self._finish(nhwc_to_tensor(self.array[np.asarray(indices, dtype=np.int64)]), indices)


class _EncodedColumn:
    """Decoding of one image column of a `datasets` table or stream, shared by DatasetImages and IterableImages: files
    are decoded here (the column is cast to Image(decode=False)), so that a bad one is named. `skip_fix` is the
    error's advice, which depends on the source."""

    def _set_column(self, feature, flag: str, resolution: int | None, center_crop: bool, skip_fix: str) -> None:
        import datasets

        self.feature, self.flag, self.resolution, self.center_crop = feature, flag, resolution, center_crop
        self.encoded = isinstance(feature, datasets.Image) and feature.decode
        self.skip_fix = skip_fix

    def _undecoded(self, dataset, column: str):
        import datasets

        return dataset.cast_column(column, datasets.Image(decode=False)) if self.encoded else dataset

    def _first_shape(self, value, resolution: int | None) -> tuple[int, int, int]:
        """(C, H, W) of the set, from its first image: one channel if it is grayscale, else RGB; its size unless
        --resolution."""
        first = self._decode("row 0", value)
        self.mode = "L" if first.mode in GRAYSCALE_MODES else "RGB"
        size = (first.height, first.width) if resolution is None else (resolution, resolution)
        return (1 if self.mode == "L" else 3, *size)

    def _decode(self, name: str, value):
        if not self.encoded:
            return to_pil(value, self.flag)
        try:
            return self.feature.decode_example(value)
        except (OSError, SyntaxError, ValueError, EOFError) as error:
            raise ValueError(
                f"{self.flag}: image {value.get('path') or name} could not be read ({type(error).__name__}: "
                f"{error}). The streaming data path cannot skip it; delete or replace it, or {self.skip_fix}."
            ) from None

    def _decode_batch(self, names: list[str], values: list) -> torch.Tensor:
        pils = [self._decode(name, value) for name, value in zip(names, values)]
        return decode_to_tensor(pils, self.resolution, self.flag, mode=self.mode, center_crop=self.center_crop)


class DatasetImages(_EncodedColumn, StreamedImages):
    """The image column of a `datasets.Dataset`, decoded a batch of rows at a time (Arrow memory-maps the table, so
    the workers share it without copying). The first row decides the mode (one channel if it is grayscale, else RGB)
    and, without --resolution, the size; a row that does not decode stops training with its name, since the resident
    path's skipping would change N after the run has started."""

    def __init__(self, dataset, column: str, flag: str, resolution: int | None, center_crop: bool):
        import datasets

        if isinstance(dataset, datasets.IterableDataset) or not hasattr(dataset, "__len__"):
            raise ValueError(
                f"{flag} is a streaming data set without a length; pass --dataset_streaming to train on it as a "
                "stream, or load it without streaming=True (or save it with save_to_disk and pass that folder)."
            )
        fix = "raise --device_data_budget_mb so that the set is decoded up front (which skips unreadable images)"
        self._set_column(dataset.features[column], flag, resolution, center_crop, fix)
        self.dataset, self.column = self._undecoded(dataset.select_columns([column]), column), column
        super().__init__((len(dataset), *self._first_shape(self.dataset[0][column], resolution)))

    def rows(self, indices: list[int]) -> torch.Tensor:
        values = self.dataset[indices][self.column]
        return self._finish(self._decode_batch([f"row {row}" for row in indices], values), indices)


class IterableImages(_EncodedColumn, StreamedImages):
    """The image column (and class labels) of a `datasets.IterableDataset` (--dataset_streaming): a stream without a
    length. The main process reads encoded rows in the order of `StreamBatchSampler`; the workers decode them here,
    with the map-style path's functions. Its shape's N is 0: the number of images is unknown."""

    has_length = False

    def __init__(self, dataset, column: str, label_column: str | None, class_names, flag: str, config):
        self._set_column(dataset.features[column], flag, config.resolution, config.center_crop, "load it without "
                         "--dataset_streaming, which skips unreadable images")  # fmt: skip
        self.column, self.label_column, self.class_names = column, label_column, class_names
        self.buffer_size = config.shuffle_buffer_size
        columns = [column] + ([label_column] if label_column else [])
        self.dataset = self._undecoded(dataset.select_columns(columns), column)
        first = next(iter(self.dataset.take(1)), None)
        if first is None:
            raise ValueError(f"{flag} has no rows; check the source.")
        super().__init__((0, *self._first_shape(first[column], config.resolution)))

    def rows(self, indices: list[int]) -> torch.Tensor:
        raise TypeError("A stream has no row indices; its batches come from StreamBatchSampler.")

    def __getitem__(self, item: tuple[int, int, dict]) -> tuple[int, int, torch.Tensor, torch.Tensor]:
        """(epoch, micro-batch, encoded rows) from the sampler -> (epoch, micro-batch, labels (B,) int64, images
        (B, C, H, W) uint8); without a label column the labels are zeros."""
        epoch, micro, rows = item
        values = rows[self.column]
        names = [f"row {i} of micro-batch {micro} of epoch {epoch}" for i in range(len(values))]
        images = self._finish(self._decode_batch(names, values), [0])
        if self.label_column is None:
            return epoch, micro, torch.zeros(len(values), dtype=torch.int64), images
        labels = class_labels(
            rows[self.label_column], self.class_names, self.label_column, self.flag, " of a streamed batch"
        )
        return epoch, micro, labels, images


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
    return _loader(images, EpochBatchSampler(batches, start_step, num_epochs), num_workers, device)


class StreamBatchSampler(torch.utils.data.Sampler):
    """--dataset_streaming's batches: encoded rows read in the main process (cheap; decoding is the workers' job)
    in the order `datasets` gives for (seed, epoch, rank): IterableDataset.shuffle's buffer and shard order, reseeded
    by set_epoch, and split_dataset_by_node's share of this rank. Each epoch's last, incomplete micro-batch is
    dropped; a rank whose share runs out goes on into its next epoch, so ranks with unequal shares still take the
    same number of steps. The first `skip` micro-batches are read and dropped undecoded: the resume of a stream."""

    def __init__(self, images: IterableImages, batch_size: int, seed: int, rank: int, world_size: int, skip: int):
        self.images, self.batch_size, self.seed, self.skip = images, batch_size, seed, skip
        self.rank, self.world_size = rank, world_size

    def __iter__(self) -> Iterator[tuple[int, int, dict]]:
        from datasets.distributed import split_dataset_by_node

        stream = self.images.dataset.shuffle(seed=self.seed, buffer_size=self.images.buffer_size)
        stream = split_dataset_by_node(stream, rank=self.rank, world_size=self.world_size)
        done = 0
        for epoch in itertools.count():
            stream.set_epoch(epoch)
            micro = -1
            for micro, rows in enumerate(stream.iter(self.batch_size, drop_last_batch=True)):
                done += 1
                if done > self.skip:
                    yield epoch, micro, rows
            if micro < 0:
                raise ValueError(
                    f"{self.images.flag} gives process {self.rank} of {self.world_size} fewer rows than one "
                    f"micro-batch ({self.batch_size}); lower --train_batch_size, or use more data."
                )


def stream_loader(images: IterableImages, batch_size: int, seed: int, rank: int, world_size: int, skip: int,
                  num_workers: int | None, device):  # fmt: skip
    """A DataLoader yielding (epoch, micro-batch, labels (B,) int64, images (B, C, H, W) uint8) of the stream, from
    micro-batch `skip` on."""
    if skip:
        logger.info(
            "Resuming a stream: replaying its first %d micro-batches and skipping them (their rows are read, not "
            "decoded); datasets' IterableDataset.state_dict would lose the shuffle buffer, so not the same order.",
            skip,
        )
    return _loader(images, StreamBatchSampler(images, batch_size, seed, rank, world_size, skip), num_workers, device)


def _loader(images: StreamedImages, sampler, num_workers: int | None, device) -> torch.utils.data.DataLoader:
    num_workers = default_num_workers() if num_workers is None else num_workers
    logger.info("Streaming batches from %d DataLoader worker process(es).", num_workers)
    return torch.utils.data.DataLoader(
        images,
        batch_size=None,  # the sampler's items are whole batches, decoded by one __getitem__ call
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=torch.device(device).type == "cuda",
        # torch's default of 2 batches ahead per worker: each waits in shared memory (/dev/shm, 64 MB in a default
        # Docker container), 12.6 MB for 1,024 RGB images at 64x64
        prefetch_factor=2 if num_workers else None,
    )


def worker_errors_raised(loader) -> Iterator:
    """The loader's items; a user error raised in a worker (an unreadable image) re-raised as its own one-line
    message. DataLoader re-raises it with the same type but a message of several lines (the worker's traceback);
    the CLI promises one line."""
    items = iter(loader)
    while True:
        try:
            item = next(items)
        except StopIteration:
            return
        except (ValueError, FileNotFoundError) as error:
            text = str(error)
            marker = f"\n{type(error).__name__}: "
            if not text.startswith(f"Caught {type(error).__name__} in DataLoader worker") or marker not in text:
                raise
            raise type(error)(text.rsplit(marker, 1)[1].strip()) from None
        yield item


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
            first_few([repr(name) for name in named], 3),
        )
