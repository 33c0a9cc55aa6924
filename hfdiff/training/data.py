"""Training data sources -> one uint8 image tensor and int64 labels, built once at load time.

Sources, in the order `load_training_data` checks the flags:
- `--sprites_npy` / `--labels_npy`: the course's two .npy files;
- `--dataset_name`: a local `Dataset.save_to_disk` folder, or a `datasets` Hub id;
- `--train_data_dir`: an image folder with one sub-folder per class (datasets' "imagefolder" builder);
- none of them: the embedded procedural sprites, `--num_train_images` of them.

With `--conditioning text` each image also gets a caption: the generator's sentence for the embedded sprites (minus
the attribute combinations `--holdout` names), the `--caption_column` of a data set, or of an image folder's
metadata.jsonl (diffusers' text_to_image layout: `file_name` plus the caption column).

Every per-image step (decoding, mode conversion, cropping and resizing) happens here, once; the training loop only
indexes the resulting tensor. A set whose decoded size exceeds the device budget is not decoded here but streamed:
its images become a `streaming.StreamedImages` that DataLoader workers decode a batch at a time, with the same
functions (streaming.py says which path runs when). Grayscale sets stay one channel; anything else becomes RGB, transparency composited on white.

Files that cannot be read are skipped, not refused: an image of a folder or data set that does not decode (corrupt,
truncated, not an image at all) is left out with one warning that counts the skipped files and names the first few,
and so is a file of an image folder that is not an image by its extension (notes.txt; hidden files and `metadata.*`
are not counted). A scraped folder of thousands of images often holds a few broken ones, and refusing would make the
user hunt them down before training at all; the warning keeps the loss visible. A source where no image can be read
is refused.
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import PIL.Image
import torch

from ..local_paths import looks_like_local_path
from .config import TrainingConfig
from .decoding import class_labels, decode_to_tensor, first_few, nhwc_to_tensor, resize_images, to_pil

if TYPE_CHECKING:
    from .streaming import DataBudget, StreamedImages

logger = logging.getLogger(__name__)

# A save_to_disk folder streamed with --dataset_streaming is cut into this many shards, so that DDP can hand each
# rank whole shards (split_dataset_by_node) where the world size divides it; a set of fewer rows gets a shard a row.
_STREAM_SHARDS = 64


@dataclass
class TrainingData:
    """A whole training set: decoded, ready to move to the device, or (streaming path) decoded batch by batch."""

    images: torch.Tensor | StreamedImages  # (N, C, H, W) uint8; StreamedImages decodes rows on demand
    labels: torch.Tensor | None  # (N,) int64 in 0..K-1; None for unconditional training
    class_names: list[str] | None  # K names, in label order; None for unconditional training
    description: str  # where the data came from, for logs
    captions: list[str] | None = None  # N sentences for --conditioning text ("" is the null context); else None
    # N lists of true captions per image (the first is captions[i]); one is drawn per image each epoch. None: the
    # caption is captions[i] every epoch.
    caption_sets: list[list[str]] | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def streaming(self) -> bool:
        """Whether batches are decoded as training goes (the set does not fit the device budget)."""
        return not isinstance(self.images, torch.Tensor)

    @property
    def has_length(self) -> bool:
        """False for a `datasets` stream (--dataset_streaming): the number of images is unknown."""
        return isinstance(self.images, torch.Tensor) or self.images.has_length

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.images.shape[2:])


def load_training_data(config: TrainingConfig, conditional: bool, budget: DataBudget | None = None) -> TrainingData:
    """Load the source the flags of `config` choose; labels are kept (and required) only when `conditional`, captions
    only (and always) with --conditioning text. With a `budget` (streaming.py), a set whose decoded size exceeds it
    is not decoded here: its images are a StreamedImages, decoded batch by batch; without one, always decoded."""
    text = conditional and config.conditioning == "text"
    captions, caption_sets = None, None
    if config.dataset_streaming:
        images, labels, class_names, description = _load_stream(config, conditional)
    elif config.sprites_npy:
        array, labels, class_names, description = _load_npy(config, conditional)
        images = _array_images(array, config, budget, description)
    elif config.dataset_name:
        dataset = _load_named_dataset(config.dataset_name, config.dataset_config_name)
        flag = f"--dataset_name {config.dataset_name}"
        images, labels, class_names, captions = _from_dataset(dataset, config, conditional, flag, budget)
        description = f"dataset {config.dataset_name}"
    elif config.train_data_dir:
        dataset = _load_image_folder(config.train_data_dir)
        flag = f"--train_data_dir {config.train_data_dir}"
        images, labels, class_names, captions = _from_dataset(dataset, config, conditional, flag, budget)
        description = f"image folder {config.train_data_dir}"
    elif text:
        array, labels, class_names, caption_sets, description = _captioned_sprites(config)
        captions = [options[0] for options in caption_sets]
        images = _array_images(array, config, budget, description)
    else:
        from hfdiff.data import SPRITE_CLASSES, generate_sprites

        array, label_array = generate_sprites(config.num_train_images, seed=config.seed)
        labels, class_names = torch.from_numpy(label_array), list(SPRITE_CLASSES)
        description = f"{config.num_train_images} procedural sprites (seed {config.seed})"
        images = _array_images(array, config, budget, description)

    if not conditional:
        labels, class_names = None, None
    return TrainingData(
        images=images,
        labels=labels,
        class_names=class_names,
        description=description,
        captions=captions,
        caption_sets=caption_sets if caption_sets and len(caption_sets[0]) > 1 else None,
    )


def _load_stream(config: TrainingConfig, conditional: bool):
    """--dataset_streaming: --dataset_name or --train_data_dir as a `datasets.IterableDataset` -> (IterableImages,
    labels, class names, description). A stream cannot be read twice up front, so only what its features say is
    known: class names come from a ClassLabel label column, and the context index is the identity (a streamed
    micro-batch's "indices" are its class labels)."""
    from .streaming import IterableImages

    if conditional and config.conditioning == "text":
        raise ValueError(
            "--conditioning text needs the table of distinct captions before training, which a stream cannot give "
            "without reading it all; drop --dataset_streaming (the map-style streaming path decodes batch by batch "
            "too), or train with --conditioning class."
        )
    if config.dataset_name:
        dataset = _load_named_dataset(config.dataset_name, config.dataset_config_name, streaming=True)
        flag, description = f"--dataset_name {config.dataset_name}", f"dataset {config.dataset_name} (streamed)"
    else:
        dataset = _load_image_folder(config.train_data_dir, streaming=True)
        flag, description = (
            f"--train_data_dir {config.train_data_dir}",
            f"image folder {config.train_data_dir} (streamed)",
        )
    if dataset.features is None:  # e.g. JSON lines: datasets infers the features from the first rows
        dataset = dataset._resolve_features()
    labels, class_names, label_column = None, None, None
    if conditional:
        import datasets

        _check_label_column(dataset, config.label_column, flag)
        feature = dataset.features[config.label_column]
        if not isinstance(feature, datasets.ClassLabel):
            raise ValueError(
                f"--label_column {config.label_column!r} of {flag} holds {feature}; with --dataset_streaming the "
                "classes must be known before reading the stream, from a ClassLabel feature. Cast the column "
                "(dataset.cast_column(column, datasets.ClassLabel(names=[...]))), or drop --dataset_streaming."
            )
        label_column, class_names = config.label_column, list(feature.names)
        labels = torch.arange(len(class_names))
    image_column = _image_column(dataset, config, flag)
    images = IterableImages(dataset, image_column, label_column, class_names, flag, config)
    logger.info(
        "%s: streaming data path (--dataset_streaming): rows read as a `datasets` stream, shuffled in a buffer of %d, "
        "decoded batch by batch in DataLoader workers; the number of images is not known.",
        flag,
        config.shuffle_buffer_size,
    )
    return images, labels, class_names, description


# ----------------------------------------------------------------------------------------------------------------
# captions: the embedded sprites' and --holdout
# ----------------------------------------------------------------------------------------------------------------


def _captioned_sprites(config: TrainingConfig):
    """The embedded sprites with their generated captions, less those --holdout names -> (images, labels, class names,
    captions, description). Labels stay, so that validation grids can show one prompt per class."""
    from hfdiff.data import SPRITE_CLASSES, generate_sprites
    from hfdiff.data.caption_grammar import sprite_caption_sets

    array, label_array, attributes = generate_sprites(
        config.num_train_images, seed=config.seed, return_attributes=True
    )
    sets = sprite_caption_sets(label_array, attributes, seed=config.seed, per_image=config.captions_per_image)
    description = (
        f"{config.num_train_images} procedural sprites with {config.captions_per_image} caption(s) each "
        f"(seed {config.seed})"
    )
    held_out = holdout_mask(attributes, parse_holdout(config.holdout))
    if held_out.all():
        raise ValueError(f"--holdout {config.holdout} leaves out every sprite; hold out fewer combinations.")
    if held_out.any():
        keep = np.flatnonzero(~held_out)
        array, label_array, sets = array[keep], label_array[keep], [sets[i] for i in keep]
        description += f", {int(held_out.sum())} held out ({'; '.join(config.holdout)})"
    return array, torch.from_numpy(label_array), list(SPRITE_CLASSES), sets, description


def parse_holdout(specs: list[str] | None) -> list[dict[str, str]]:
    """--holdout "kind=slime,colour=purple" (repeatable) -> [{"kind": "slime", "colour": "purple"}, ...]."""
    from hfdiff.data import SPRITE_ATTRIBUTES

    keys = sorted(set(SPRITE_ATTRIBUTES) - {"colour_rgb"})
    combinations = []
    for spec in specs or []:
        pairs = [pair.partition("=") for pair in spec.split(",") if pair.strip()]
        if not pairs or any(not sep or not key.strip() or not value.strip() for key, sep, value in pairs):
            raise ValueError(
                f"--holdout {spec!r} is not a list of key=value pairs; write e.g. --holdout kind=slime,colour=purple."
            )
        combination = {key.strip(): value.strip() for key, _, value in pairs}
        unknown = sorted(set(combination) - set(keys))
        if unknown:
            raise ValueError(f"--holdout {spec!r} names unknown attributes {unknown}; the sprites have {keys}.")
        combinations.append(combination)
    return combinations


def holdout_mask(attributes: dict[str, np.ndarray], combinations: list[dict[str, str]]) -> np.ndarray:
    """(N,) bool: True for the sprites that match every key=value pair of at least one combination. A value that no
    sprite has is refused (most likely a typo); a combination that matches no sprite is only logged."""
    num_images = len(attributes["kind"])
    held_out = np.zeros(num_images, dtype=bool)
    for combination in combinations:
        match = np.ones(num_images, dtype=bool)
        for key, value in combination.items():
            column = np.asarray(attributes[key], dtype=object)
            if not (column == value).any():
                known = sorted(set(column.tolist()) - {""})
                raise ValueError(f"--holdout {key}={value}: no sprite has {key} {value!r}; known values: {known}.")
            match &= column == value
        if not match.any():
            logger.warning("--holdout %s matches no sprite; nothing is left out for it.", combination)
        held_out |= match
    return held_out


def check_image_size(size: tuple[int, int], block_out_channels, source: str) -> None:
    """The UNet halves the image len(block_out_channels) - 1 times; both sides must survive that exactly."""
    factor = 2 ** (len(block_out_channels) - 1)
    if any(side % factor for side in size):
        multiple = max(factor, -(-max(size) // factor) * factor)
        raise ValueError(
            f"{source} images are {size[0]}x{size[1]}, but this UNet downsamples {len(block_out_channels) - 1} times, "
            f"so both sides must be multiples of {factor}; pass e.g. --resolution {multiple}."
        )


# ----------------------------------------------------------------------------------------------------------------
# sources
# ----------------------------------------------------------------------------------------------------------------


def _array_images(array: np.ndarray, config: TrainingConfig, budget: DataBudget | None, description: str):
    """(N, H, W, C) or (N, H, W) uint8 host array -> the (N, C, H, W) tensor at --resolution, or, when that exceeds
    `budget`, ArrayImages over the compact array (cropped and resized a batch at a time)."""
    from . import streaming

    channels = 1 if array.ndim == 3 else array.shape[3]
    size = array.shape[1:3] if config.resolution is None else (config.resolution, config.resolution)
    if streaming.streams(len(array), (channels, *size), budget, description):
        return streaming.ArrayImages(array, config.resolution, config.center_crop)
    images = nhwc_to_tensor(array)
    if config.resolution is not None and images.shape[2:] != size:
        images = resize_images(images, config.resolution, config.center_crop)
    return images


def _load_npy(config: TrainingConfig, conditional: bool):
    from hfdiff.data import SPRITE_CLASSES
    from hfdiff.data.npy import load_npy_sprites

    if conditional and not config.labels_npy:
        raise ValueError(
            f"Conditional training needs labels: --sprites_npy {config.sprites_npy} was given without --labels_npy. "
            "Pass the course's labels file (e.g. --labels_npy sprite_labels_nc_1788_16x16.npy), or train without "
            "labels with train_unconditional.py."
        )
    if config.labels_npy:
        array, label_array, num_classes = load_npy_sprites(
            config.sprites_npy, config.labels_npy, return_num_classes=True
        )
    else:
        if not os.path.isfile(config.sprites_npy):
            raise FileNotFoundError(f"--sprites_npy {config.sprites_npy} does not exist; check the path.")
        try:
            array, label_array = np.load(config.sprites_npy, allow_pickle=False), None
            if not isinstance(array, np.ndarray):  # an .npz archive
                raise ValueError(f"it holds {type(array).__name__}, not an array")
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:  # pickles, truncated files, not .npy
            raise ValueError(
                f"--sprites_npy {config.sprites_npy} is not a plain .npy array ({error}); expected a file written "
                "by np.save(path, images) from a uint8 array."
            ) from None
        if array.dtype != np.uint8 or array.ndim not in (3, 4):
            raise ValueError(
                f"--sprites_npy {config.sprites_npy} holds a {array.dtype} array of shape {array.shape}; expected "
                "uint8 images of shape (N, H, W, C) or (N, H, W)."
            )
    if len(array) == 0:
        raise ValueError(
            f"--sprites_npy {config.sprites_npy} holds no images (array of shape {array.shape}); pass the file with "
            "the images (N, H, W, C), N >= 1."
        )
    labels = None if label_array is None else torch.from_numpy(np.asarray(label_array, dtype=np.int64))
    # The files carry no names: five classes are the course's (its labels file is (N, 5) one-hot in this order);
    # any other count gets its indices as names, rather than course names that would not match the images.
    if labels is None:
        class_names = None
    elif num_classes == len(SPRITE_CLASSES):
        class_names = list(SPRITE_CLASSES)
    else:
        class_names = [str(k) for k in range(num_classes)]
    return array, labels, class_names, f"course files {config.sprites_npy}"


def _is_saved_dataset(path: str) -> bool:
    names = set(os.listdir(path))
    return "dataset_dict.json" in names or {"dataset_info.json", "state.json"} <= names


def _load_named_dataset(name: str, config_name: str | None, streaming: bool = False):
    """A save_to_disk folder (loaded with load_from_disk), any other local folder, or a Hub id -> a Dataset; with
    `streaming`, an IterableDataset (load_dataset's streaming=True; a save_to_disk folder's to_iterable_dataset)."""
    import datasets

    path = os.path.expanduser(name)
    if os.path.isdir(path) and _is_saved_dataset(path):
        try:
            dataset = datasets.load_from_disk(path)
        except Exception as err:  # datasets fails with IndexError on an empty save, others on damaged files
            raise ValueError(
                f"--dataset_name {name}: the save_to_disk folder could not be loaded ({type(err).__name__}: {err}); "
                "it may be empty or damaged. Save the data set again with at least one row."
            ) from err
        if streaming:
            split = _train_split(dataset, name)  # a shard holds at least one row: fewer shards for a small set
            dataset = split.to_iterable_dataset(num_shards=max(1, min(_STREAM_SHARDS, len(split))))
    elif os.path.isdir(path):
        dataset = datasets.load_dataset(path, streaming=streaming)
    elif looks_like_local_path(name):
        raise FileNotFoundError(f"--dataset_name {name} looks like a local path but does not exist; check the path.")
    else:
        try:
            dataset = datasets.load_dataset(name, config_name, streaming=streaming)
        except Exception as err:  # datasets raises many types here (offline, not found, gated); all need the same fix
            raise FileNotFoundError(
                f"--dataset_name {name}: not a local folder, and loading it from the Hub failed ({err}). Check the "
                "id, your network (HF_HUB_OFFLINE), or pass a save_to_disk folder."
            ) from err
    return _train_split(dataset, name)


def _train_split(dataset, name: str):
    import datasets

    if not isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        return dataset
    if "train" in dataset:
        return dataset["train"]
    if len(dataset) == 1:
        return next(iter(dataset.values()))
    raise ValueError(
        f"{name} has splits {sorted(dataset)} and none is called 'train'; save the one to train on alone."
    )


def _load_image_folder(path: str, streaming: bool = False):
    import datasets

    if not os.path.exists(path):
        raise FileNotFoundError(f"--train_data_dir {path} does not exist; check the path.")
    if not os.path.isdir(path):
        raise ValueError(f"--train_data_dir {path} is a file; pass a folder with one sub-folder of images per class.")
    image_extensions = set(PIL.Image.registered_extensions())
    found, others, images = set(), [], []  # extensions of the images; files imagefolder will ignore; image paths
    for folder, _, names in os.walk(path):
        for name in names:
            extension = os.path.splitext(name)[1].lower()
            if extension in image_extensions:
                found.add(extension)
                images.append(os.path.join(folder, name))
            elif not name.startswith((".", "metadata.")):  # hidden files and imagefolder's metadata are expected
                others.append(os.path.relpath(os.path.join(folder, name), path))
    if not found:
        raise ValueError(
            f"--train_data_dir {path} holds no image files (.png, .jpg, ...); put the images in one sub-folder per "
            f"class, e.g. {path}/hero/0001.png."
        )
    if others:
        logger.warning(
            "Skipped %d file(s) of --train_data_dir %s that are not images by their extension: %s. Only the %s "
            "files are read.",
            len(others),
            path,
            first_few(others),
            "/".join(sorted(found)),
        )
    check_metadata_files(path, images)
    return _train_split(datasets.load_dataset("imagefolder", data_dir=path, streaming=streaming), path)


def check_metadata_files(path: str, images: list[str]) -> None:
    """Each metadata.jsonl of image folder `path` (datasets' imagefolder reads one per folder, its file_name entries
    relative to it) readable and naming files of the folder, and what imagefolder would drop without a word said:
    images without a row, rows naming no image (a warning each, with the names). `images`: the folder's image paths.
    One pass over the lines; the images are not opened."""
    root = os.path.abspath(path)
    for folder, _, names in os.walk(path):
        if "metadata.jsonl" not in names:
            continue
        metadata = os.path.join(folder, "metadata.jsonl")
        where = f"--train_data_dir {path}: {metadata}"
        try:
            with open(metadata, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except UnicodeDecodeError as error:
            raise ValueError(
                f"{where} is not UTF-8 text (byte {error.start}: {error.reason}); save it as UTF-8, one JSON object "
                "per line."
            ) from None
        named = set()
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"{where}, line {number} is not JSON ({error.msg}); fix or delete the line."
                ) from None
            file_name = row.get("file_name") if isinstance(row, dict) else None
            if not isinstance(file_name, str) or not file_name:
                raise ValueError(
                    f'{where}, line {number} has no "file_name" (the image\'s path relative to the folder), e.g. '
                    '{"file_name": "0001.png", "text": "a green slime"}.'
                )
            target = os.path.abspath(os.path.join(folder, file_name))
            if os.path.isabs(file_name) or not target.startswith(root + os.sep):
                raise ValueError(
                    f"{where}, line {number} names {file_name!r}, which is not inside --train_data_dir; file_name "
                    "entries are paths relative to the metadata's folder, inside it."
                )
            named.add(target)
        if not named:
            raise ValueError(
                f'{where} is empty; write one line per image, e.g. {{"file_name": "0001.png", "text": "a green '
                'slime"}, or delete it (class sub-folders need no metadata).'
            )
        prefix = os.path.abspath(folder) + os.sep
        here = {os.path.abspath(image) for image in images if os.path.abspath(image).startswith(prefix)}
        unnamed = sorted(os.path.relpath(image, folder) for image in here - named)
        if unnamed:
            logger.warning(
                "%d of the %d images under %s have no row in its metadata.jsonl and are left out of training (as "
                "datasets' imagefolder does): %s. Add a row for each, or move them out of the folder.",
                len(unnamed), len(here), folder, first_few(unnamed),
            )  # fmt: skip
        absent = sorted(os.path.relpath(name, folder) for name in named - here)
        if absent:
            logger.warning(
                "%d row(s) of %s name images that are not in the folder (or not images): %s; they are left out.",
                len(absent), metadata, first_few(absent),
            )  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# datasets.Dataset -> tensors
# ----------------------------------------------------------------------------------------------------------------


def _image_column(dataset, config: TrainingConfig, flag: str) -> str:
    import datasets

    columns = dataset.column_names
    if config.image_column in columns:
        return config.image_column
    image_columns = [name for name, feature in dataset.features.items() if isinstance(feature, datasets.Image)]
    if config.image_column == "image" and len(image_columns) == 1:  # the default name, e.g. cifar10's "img"
        logger.info("No 'image' column in %s; using its image column %r.", flag, image_columns[0])
        return image_columns[0]
    raise ValueError(
        f"--image_column {config.image_column!r} is not a column of {flag}, whose columns are {columns}; "
        "choose one with --image_column."
    )


def _from_dataset(dataset, config: TrainingConfig, conditional: bool, flag: str, budget: DataBudget | None = None):
    """A datasets.Dataset -> (images (N, C, H, W) uint8 or StreamedImages over `budget`, labels (N,) int64 or None,
    class names or None, captions or None). --conditioning text reads captions instead of labels."""
    if len(dataset) == 0:
        raise ValueError(f"{flag} has no rows; check the source.")
    image_column = _image_column(dataset, config, flag)
    labels, class_names, captions = None, None, None
    if conditional and config.conditioning == "text":
        captions = _captions(dataset, config.caption_column, flag)
    elif conditional:
        _check_label_column(dataset, config.label_column, flag)
        labels, class_names = _labels(dataset, config.label_column, flag)
    if budget is not None:
        from .streaming import DatasetImages, streams

        streamed = DatasetImages(dataset, image_column, flag, config.resolution, config.center_crop)
        if streams(len(streamed), tuple(streamed.shape[1:]), budget, flag):
            return streamed, labels, class_names, captions
    pils, kept = _decode_images(dataset, image_column, flag)
    if labels is not None and len(kept) < len(labels):
        labels = labels[torch.tensor(kept, dtype=torch.int64)]
    if captions is not None and len(kept) < len(captions):
        captions = [captions[i] for i in kept]
    images = decode_to_tensor(pils, config.resolution, flag, center_crop=config.center_crop)
    if config.resolution is not None and images.shape[2:] != (config.resolution, config.resolution):
        images = resize_images(images, config.resolution, config.center_crop)
    return images, labels, class_names, captions


def _check_label_column(dataset, column: str, flag: str) -> None:
    if column not in dataset.column_names and flag.startswith("--train_data_dir") and column == "label":
        # datasets' imagefolder gives no label column when every image lies in one folder: the folder has one class.
        path = flag.split(" ", 1)[1]
        folders = sorted(name for name in os.listdir(path) if os.path.isdir(os.path.join(path, name)))
        where = f"one class folder ({folders[0]}/)" if len(folders) == 1 else "its images outside class sub-folders"
        raise ValueError(
            f"{flag} has {where}, and conditional training needs two classes at least: put each class's images in a "
            f"sub-folder of its own ({path}/<class>/0001.png), or train without labels with train_unconditional.py "
            f"--train_data_dir {path}."
        )
    if column not in dataset.column_names:
        raise ValueError(
            f"Conditional training needs labels, but --label_column {column!r} is not a column of {flag} (columns: "
            f"{dataset.column_names}). Choose one with --label_column, put the images of an image folder in one "
            "sub-folder per class (two classes at least), or train without labels with train_unconditional.py."
        )


def _captions(dataset, column: str, flag: str) -> list[str]:
    """The caption column as N strings; a missing caption (None) is the empty prompt, i.e. the null context."""
    if column not in dataset.column_names:
        raise ValueError(
            f"--conditioning text needs captions, but --caption_column {column!r} is not a column of {flag} "
            f"(columns: {dataset.column_names}). Choose one with --caption_column; an image folder takes its captions "
            "from a metadata.jsonl with a file_name and a caption entry per image."
        )
    values = list(dataset[column])
    wrong = [value for value in values if value is not None and not isinstance(value, str)]
    if wrong:
        raise ValueError(
            f"--caption_column {column!r} of {flag} holds {type(wrong[0]).__name__} values such as {wrong[0]!r}; "
            "expected sentences (strings). Choose the caption column with --caption_column."
        )
    captions = [value or "" for value in values]
    empty = [row for row, caption in enumerate(captions) if not caption.strip()]
    if len(empty) == len(captions):
        raise ValueError(
            f"--caption_column {column!r} of {flag} is empty: all {len(captions)} captions are blank. Fill it, or "
            f"choose another of the columns {dataset.column_names} with --caption_column."
        )
    if empty:
        # A blank caption is almost always a gap in the data, not a wish for unconditional training (caption
        # dropout, --p_uncond, already trains the null context), so it is refused rather than trained on.
        shown = ", ".join(map(str, empty[:10])) + (f" and {len(empty) - 10} more" if len(empty) > 10 else "")
        raise ValueError(
            f"--caption_column {column!r} of {flag} has {len(empty)} empty or missing caption(s), rows {shown} "
            f"(0-based); write a caption for each, or remove those images."
        )
    return captions


def _labels(dataset, column: str, flag: str) -> tuple[torch.Tensor, list[str]]:
    """ClassLabel -> its names; other ints -> "0".."K-1", every class used (`check_class_indices`); strings -> the
    sorted distinct strings."""
    import datasets

    from hfdiff.data.npy import check_class_indices

    feature = dataset.features[column]
    values = list(dataset[column])
    if isinstance(feature, datasets.ClassLabel):
        return class_labels(values, feature.names, column, flag), list(feature.names)
    if all(isinstance(value, str) for value in values):
        names = sorted(set(values))
        index = {name: k for k, name in enumerate(names)}
        return torch.tensor([index[value] for value in values], dtype=torch.int64), names
    if all(isinstance(value, (int, np.integer)) and not isinstance(value, bool) for value in values):
        labels = torch.tensor(values, dtype=torch.int64)
        if labels.min() < 0:
            raise ValueError(f"--label_column {column!r} of {flag} has negative labels; expected 0..K-1.")
        num_classes = check_class_indices(labels.numpy(), f"--label_column {column!r} of {flag}")
        return labels, [str(k) for k in range(num_classes)]
    raise ValueError(
        f"--label_column {column!r} of {flag} holds {feature}; expected class indices (ints or a ClassLabel) or "
        "class names (strings)."
    )


def _decode_images(dataset, column: str, flag: str) -> tuple[list[PIL.Image.Image], list[int]]:
    """Decode every image of `column` once -> (the images, the rows they came from). Files that do not decode are
    skipped with one warning (see the module docstring); none at all decoding is an error."""
    import datasets

    feature = dataset.features[column]
    encoded = isinstance(feature, datasets.Image) and feature.decode
    if encoded:  # decode each file here (with datasets' own decoder), so that one bad file does not stop the rest
        dataset = dataset.select_columns([column]).cast_column(column, datasets.Image(decode=False))
    else:
        dataset = dataset.select_columns([column])
    images, kept, unreadable = [], [], []
    rows = (value for batch in dataset.iter(batch_size=1024) for value in batch[column])
    for row, value in enumerate(rows):
        if not encoded:
            images.append(to_pil(value, flag))
            kept.append(row)
            continue
        try:
            images.append(feature.decode_example(value))
            kept.append(row)
        except (OSError, SyntaxError, ValueError, EOFError, PIL.Image.DecompressionBombError) as error:
            # PIL raises UnidentifiedImageError (an OSError) for non-images, OSError for truncated files, and
            # SyntaxError or ValueError for some broken chunks.
            unreadable.append(f"{value.get('path') or f'row {row}'} ({type(error).__name__}: {error})")
    if not images:
        raise ValueError(
            f"None of the {len(unreadable)} images of {flag} could be read, e.g. {unreadable[0]}; check that the "
            "files are images (.png, .jpg, ...) that open in an image viewer."
        )
    if unreadable:
        logger.warning(
            "Skipped %d of %d images of %s that could not be read: %s. Training goes on with the other %d; delete "
            "or replace those files to silence this warning.",
            len(unreadable),
            len(unreadable) + len(images),
            flag,
            first_few(unreadable, 3),
            len(images),
        )
    return images, kept
