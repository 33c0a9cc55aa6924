"""The course's sprite files: `sprites_1788_16x16.npy` (images) and `sprite_labels_nc_1788_16x16.npy` (labels).

Both are plain NumPy arrays: images (N, 16, 16, 3) uint8 and labels (N, 5) one-hot float. They are loaded with
`allow_pickle=False`, so a file that holds Python objects is refused rather than executed.
"""

from __future__ import annotations

import os

import numpy as np

# The most classes a label file or column may have: the UNet's context is one entry per class, and
# ContextUNet2DModel's config takes context_dim up to this (UNET_CONFIG_LIMITS). Checked from the .npy header and
# from the largest index, before any (N, K) array or class table is built.
MAX_CLASSES = 16384


def _load(path, what: str) -> np.ndarray:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} file not found: {path!r}. Pass the path of the course's .npy file.")
    try:
        array = np.load(path, allow_pickle=False, mmap_mode="r")  # the header only: shapes are checked first
    except ValueError as error:  # object arrays (pickles) and files that are not .npy at all
        raise ValueError(
            f"Could not read {what} file {path!r} as a plain NumPy array ({error}). Expected a .npy file written by "
            "np.save from a numeric array."
        ) from None
    if what == "labels" and array.ndim == 2 and array.shape[1] > MAX_CLASSES:
        raise ValueError(
            f"labels file {path!r} has one-hot rows {array.shape[1]:,} wide, more than the {MAX_CLASSES:,} classes "
            "hfdiff's model takes (one context entry per class); check that it is the labels file, or pass class "
            "indices (N,)."
        )
    return np.asarray(array)


def _is_integral(array: np.ndarray) -> bool:
    if array.dtype.kind in "iub":
        return True
    return array.dtype.kind == "f" and bool(np.all(np.isfinite(array))) and bool(np.all(array == np.round(array)))


def load_npy_sprites(sprites_path, labels_path, return_num_classes: bool = False):
    """Load the course's image and label arrays, checked and converted to hfdiff's layout.

    Args:
        sprites_path: .npy file of images (N, H, W, C) with C = 1 or 3 (or (N, H, W), read as C = 1), uint8 or
            integer-valued in 0..255 (cast to uint8).
        labels_path: .npy file of labels, either one-hot (N, K) (the course's float one-hot; each row's single
            largest entry is its class; K is the width, whether or not every class has images) or class indices
            (N,), which must use every class of 0..K-1 (see `check_class_indices`).
        return_num_classes: also return K.

    Returns:
        images: (N, H, W, C) uint8.
        labels: (N,) int64 class indices.
        num_classes: K, only with `return_num_classes`.
    """
    images = _load(sprites_path, "sprites")
    labels = _load(labels_path, "labels")

    images = _checked_images(images, sprites_path)
    labels, num_classes = _checked_labels(labels, labels_path)

    if len(images) != len(labels):
        raise ValueError(
            f"{os.fspath(sprites_path)!r} holds {len(images)} images but {os.fspath(labels_path)!r} holds "
            f"{len(labels)} labels; expected one label per image. Check that the two files belong together."
        )
    return (images, labels, num_classes) if return_num_classes else (images, labels)


def check_class_indices(labels: np.ndarray, source: str) -> int:
    """Class indices (N,) -> K, the number of classes, refusing labels that are not 0..K-1 with every class used.

    K decides the model's context width (one context entry per class), so a gap would train and save classes that no
    image shows: one outlier label of 999 among classes 0..4 would make a 1,000-class model. `source` names the labels
    in the message."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return 0
    if labels.min() < 0:
        raise ValueError(f"{source} has negative class indices (e.g. {int(labels.min())}); expected 0..K-1.")
    used, counts = np.unique(labels, return_counts=True)
    num_classes = int(used[-1]) + 1
    if len(used) == num_classes and num_classes <= MAX_CLASSES:
        return num_classes
    # The gaps from the used indices alone (never range(num_classes): one outlier of 10**9 would build a billion).
    bounds = np.concatenate([[-1], used])
    starts = np.flatnonzero(np.diff(bounds) > 1)
    gaps = [(int(bounds[i]) + 1, int(bounds[i + 1]) - 1) for i in starts]
    missing = ", ".join(str(a) if a == b else f"{a}..{b}" for a, b in gaps[:8]) + (", ..." if len(gaps) > 8 else "")
    # An index far above the others is most likely a typo: name the rows that use the classes above the first gap.
    above = used[used > gaps[0][0]] if gaps else used[used >= MAX_CLASSES]
    rare = ", ".join(f"{int(k)} ({int(counts[used == k][0])} image(s))" for k in above[:5])
    if not gaps:  # every class used, but more of them than a model takes
        raise ValueError(
            f"{source} has {num_classes:,} classes, more than the {MAX_CLASSES:,} hfdiff's model takes (one context "
            "entry per class); merge classes, or train on the images without labels."
        )
    raise ValueError(
        f"{source} uses {len(used)} distinct class indices but the largest is {num_classes - 1}, so classes "
        f"{missing} of 0..{num_classes - 1} have no images (classes above the gap: {rare}"
        f"{', ...' if len(above) > 5 else ''}). Labels must be 0..K-1 with every class used: relabel them "
        "(e.g. np.unique(labels, return_inverse=True)[1]) or remove the rows with outlier labels."
    )


def _checked_images(images: np.ndarray, sprites_path) -> np.ndarray:
    """(N, H, W[, C]) integer pixels -> (N, H, W, C) uint8, or a ValueError saying how to convert them."""
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise ValueError(
            f"sprites in {os.fspath(sprites_path)!r} have shape {images.shape}; expected images (N, H, W, C), "
            "e.g. (89400, 16, 16, 3). Save the array as np.save(path, images) with images stacked on the first axis."
        )
    if images.shape[-1] not in (1, 3):
        raise ValueError(
            f"sprites in {os.fspath(sprites_path)!r} have {images.shape[-1]} channels (shape {images.shape}); "
            "expected 1 (grey) or 3 (RGB) channels last. Move the channel axis last (np.moveaxis(images, 1, -1)) "
            "or drop an alpha channel (images[..., :3])."
        )
    if images.dtype != np.uint8:
        numeric = images.dtype.kind in "biuf"
        if not _is_integral(images) or (images.size and (images.min() < 0 or images.max() > 255)):
            values = f" with values in [{images.min()}, {images.max()}]" if numeric and images.size else ""
            raise ValueError(
                f"sprites in {os.fspath(sprites_path)!r} are {images.dtype}{values}; expected uint8 pixels (or "
                "integers in 0..255). Convert floats in [0, 1] with (images * 255).round().astype(np.uint8)."
            )
        images = images.astype(np.uint8)
    return images


def _checked_labels(labels: np.ndarray, labels_path) -> tuple[np.ndarray, int]:
    """One-hot (N, K) or indices (N,) -> ((N,) int64 class indices, K), or a ValueError saying what was expected."""
    if labels.dtype == np.bool_:
        labels = labels.astype(np.uint8)
    if labels.ndim == 2:
        if labels.shape[1] == 0 or not np.issubdtype(labels.dtype, np.number) or not np.all(np.isfinite(labels)):
            raise ValueError(
                f"labels in {os.fspath(labels_path)!r} have shape {labels.shape} and dtype {labels.dtype}; expected "
                "finite one-hot rows (N, K) with K >= 1 classes."
            )
        top = labels.max(axis=1, keepdims=True)
        ties = (labels == top).sum(axis=1)
        if labels.shape[0] and (np.any(top <= 0) or np.any(ties != 1)):
            row = int(np.flatnonzero((top[:, 0] <= 0) | (ties != 1))[0])
            raise ValueError(
                f"labels in {os.fspath(labels_path)!r} are not one-hot: row {row} is {labels[row].tolist()}. Expected "
                "each row to have a single largest, positive entry (its class), as in the course's one-hot file."
            )
        return labels.argmax(axis=1).astype(np.int64), labels.shape[1]
    elif labels.ndim == 1:
        if not _is_integral(labels) or (labels.size and labels.min() < 0):
            raise ValueError(
                f"labels in {os.fspath(labels_path)!r} are a ({labels.shape[0]},) {labels.dtype} array; class indices "
                "must be non-negative integers. Pass one-hot rows (N, K) or integer classes (N,)."
            )
        labels = labels.astype(np.int64)
        return labels, check_class_indices(labels, f"labels file {os.fspath(labels_path)!r}")
    else:
        raise ValueError(
            f"labels in {os.fspath(labels_path)!r} have shape {labels.shape}; expected one-hot (N, K), e.g. "
            "(89400, 5), or class indices (N,)."
        )
