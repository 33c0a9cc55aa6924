"""Sample quality with no downloads: a small sprite classifier, conditional accuracy, and a Fréchet distance in that
classifier's feature space, printed beside the real-vs-real floor.

    from hfdiff import evaluate as ev

    real = ev.real_sprites(num_train=20_000)                        # procedural sprites: train + held-out split
    # or: real = ev.real_training_data(train_data_dir="digits", resolution=16)   # a folder / `datasets` set, as trained
    classifier = ev.train_classifier_on(real)                       # its classifier part; flips only for sprites
    ev.save_classifier(classifier, "sprite-model/classifier")       # safetensors + classifier_config.json
    metrics = ev.evaluate_pipeline(pipe, classifier, real, per_class=100, generator=torch.manual_seed(0))
    rows = ev.ddpm_vs_ddim(pipe, classifier, real, steps=(10, 25, 50, 100, None), per_class=50)
    ev.write_report(rows, "report/")                                # report.md, report.json, report.png

- Conditional accuracy: the share of images generated for class k that the classifier puts in class k (per class and
  overall). It measures whether the context steers the sample, not how pretty the sample is.
- Fréchet distance (FD): ||mu_g - mu_r||^2 + Tr(S_g + S_r - 2 (S_g S_r)^(1/2)) between Gaussians fitted to the
  classifier's penultimate features of generated and real images (Heusel et al. 2017's FID formula in a small,
  sprite-specific feature space). Its value depends on the sample size, so it is always printed beside the floor: the
  FD between two real sets of the same size (training images vs held-out ones).
- Standard FID (Inception, torch-fidelity) is added only when torch-fidelity is installed AND its Inception weights
  are already in the torch hub cache; nothing is ever downloaded.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from diffusers.image_processor import VaeImageProcessor
from torch import nn
from tqdm.auto import tqdm

from hfdiff.samplers import REPORT_SAMPLERS

CLASSIFIER_WEIGHTS = "classifier.safetensors"
CLASSIFIER_CONFIG = "classifier_config.json"
HELDOUT_SEED = 1_000_003  # seed of the held-out procedural sprites (training data uses small seeds such as 0)
INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's FID Inception v3
PROCEDURAL_SPRITES = "procedural sprites"  # in the description of data drawn by hfdiff.data.generate_sprites

logger = logging.getLogger(__name__)
_POOLINGS_LOGGED: set[tuple[int, int]] = set()


# ----------------------------------------------------------------------------------------------------------------
# Real data
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class RealSprites:
    """Real images for training the classifier and as the Fréchet reference, with a held-out part for the floor.

    *_images: (N, H, W, 3) uint8; *_labels: (N,) int64 indices into class_names."""

    train_images: np.ndarray
    train_labels: np.ndarray
    heldout_images: np.ndarray
    heldout_labels: np.ndarray
    class_names: list[str]
    description: str
    # How many of train_images the classifier trains on (None: all). User data keeps the held-out images out of it.
    num_classifier_train: int | None = None
    # Random horizontal flips while training the classifier: see real_training_data for which data gets them.
    flip: bool = True
    # Which data this is, stable across sizes and runs ("procedural sprites", an image folder by path): a classifier
    # saved with one is reused only for the same (see `check_classifier_data`).
    source: str = ""


def data_source_id(kind: str, name: str) -> str:
    """A stable name for a data source: a local path as its folder name plus a hash of its absolute path (the same
    folder moved is another source; the user's file system is not written into the classifier's config), a Hub id
    as itself."""
    import hashlib

    if not os.path.exists(name):
        return f"{kind} {name}"
    path = os.path.abspath(name)
    return f"{kind} {os.path.basename(path)} ({hashlib.sha256(path.encode()).hexdigest()[:12]})"


def real_sprites(num_train: int = 20_000, num_heldout: int = 5_000, seed: int = 0) -> RealSprites:
    """Procedural sprites (hfdiff's default training data): `num_train` drawn with `seed` (the seed training uses),
    `num_heldout` drawn with HELDOUT_SEED. Both are i.i.d. draws of the same generator."""
    from hfdiff.data import SPRITE_CLASSES, generate_sprites

    train_images, train_labels = generate_sprites(num_train, seed=seed)
    heldout_images, heldout_labels = generate_sprites(num_heldout, seed=HELDOUT_SEED)
    return RealSprites(
        train_images,
        train_labels,
        heldout_images,
        heldout_labels,
        list(SPRITE_CLASSES),
        f"procedural sprites ({num_train} train, seed {seed}; {num_heldout} held out)",
        source=PROCEDURAL_SPRITES,
    )


def real_npy(images_path: str, labels_path: str, heldout_fraction: float = 0.1, seed: int = 0) -> RealSprites:
    """The course's .npy files, split at random (by `seed`) into train and a held-out `heldout_fraction`."""
    from hfdiff.data import SPRITE_CLASSES, load_npy_sprites

    images, labels = load_npy_sprites(images_path, labels_path)
    labels = np.asarray(labels)
    if labels.ndim == 2:  # one-hot rows
        labels = labels.argmax(axis=1)
    order = np.random.default_rng(seed).permutation(len(images))
    cut = len(images) - max(1, int(len(images) * heldout_fraction))
    train, heldout = order[:cut], order[cut:]
    names = (
        list(SPRITE_CLASSES) if labels.max() < len(SPRITE_CLASSES) else [f"class {k}" for k in range(labels.max() + 1)]
    )
    return RealSprites(
        images[train],
        labels[train].astype(np.int64),
        images[heldout],
        labels[heldout].astype(np.int64),
        names,
        f"{os.path.basename(images_path)} ({len(train)} train, {len(heldout)} held out)",
        source=f"{data_source_id('.npy images', images_path)}, {data_source_id('.npy labels', labels_path)}",
    )


def real_training_data(
    train_data_dir: str | None = None,
    dataset_name: str | None = None,
    image_column: str = "image",
    label_column: str = "label",
    resolution: int | None = None,
    center_crop: bool = True,
    dataset_config_name: str | None = None,
    seed: int = 0,
) -> RealSprites:
    """An image folder or a `datasets` set read by the training scripts' own loader (hfdiff.training), so the classifier
    and the Fréchet reference see exactly the pixels training saw (channels, --resolution, centre crop).

    The images are shuffled once (`seed`): the classifier trains on the first half, the held-out part is the second
    half, and train_images is all of them, so train_images[:n] and the held-out images are disjoint for n <= half."""
    from hfdiff.training import TrainingConfig, load_training_data

    if bool(train_data_dir) == bool(dataset_name):
        raise ValueError(f"Give one of train_data_dir and dataset_name (got {train_data_dir!r} and {dataset_name!r}).")
    config = TrainingConfig(
        train_data_dir=train_data_dir,
        dataset_name=dataset_name,
        dataset_config_name=dataset_config_name,
        image_column=image_column,
        label_column=label_column,
        resolution=resolution,
        center_crop=center_crop,
    )
    data = load_training_data(config, conditional=True)
    order = np.random.default_rng(seed).permutation(len(data))
    images = data.images.permute(0, 2, 3, 1).numpy()[order]  # (N, H, W, C) uint8, as the classifier reads them
    labels = data.labels.numpy()[order]
    half = len(images) // 2
    return RealSprites(
        images,
        labels,
        images[half:],
        labels[half:],
        list(data.class_names),
        f"{data.description} ({len(images)} images, {data.channels} channel(s), {data.size[0]}x{data.size[1]})",
        num_classifier_train=half,
        # No flips: a folder or a Hub set may be direction-dependent (a mirrored digit or letter is another symbol, or
        # none), and nothing says it is not. Sprites (procedural or the course's .npy) face both ways in every class.
        flip=False,
        source=data_source_id("image folder", train_data_dir)
        if train_data_dir
        else data_source_id("dataset", dataset_name),
    )


def check_class_names(real: RealSprites, model_class_names: Sequence[str] | None) -> None:
    """Refuse real data whose classes are not the model's (scoring matches classes by name, so order is free)."""
    if model_class_names is not None and sorted(model_class_names) != sorted(real.class_names):
        raise ValueError(
            f"The model's classes {list(model_class_names)} are not those of the real data {real.class_names} "
            f"({real.description}); pass the data the model was trained on."
        )


def to_model_input(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, C) uint8 images -> (N, C, H, W) float in [-1, 1], the scaling diffusion training uses."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


# ----------------------------------------------------------------------------------------------------------------
# Classifier
# ----------------------------------------------------------------------------------------------------------------


def conv_body(in_channels: int = 3, feature_dim: int = 64) -> nn.Sequential:
    """The classifiers' shared trunk: (B, C, H, W) in [-1, 1] -> conv 32 -> conv 64 /2 -> conv 64 /2 -> conv 64 ->
    global mean -> Linear -> features (B, feature_dim)."""

    def block(c_in, c_out, stride):
        return [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

    return nn.Sequential(
        *block(in_channels, 32, 1),
        *block(32, 64, 2),
        *block(64, 64, 2),
        *block(64, 64, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, feature_dim),
    )


class SpriteClassifier(nn.Module):
    """A small CNN (about 100k parameters) for sprite classes; its penultimate layer is the Fréchet feature space.

    (B, C, H, W) in [-1, 1] -> conv 32 -> conv 64 /2 -> conv 64 /2 -> conv 64 -> global mean -> features (B, F)
    -> ReLU -> logits (B, K). Features are taken before the ReLU, so they are not half zeros."""

    def __init__(
        self,
        class_names: Sequence[str],  # one name per class, in label order
        image_size: int = 16,  # height and width of the images it was trained on
        in_channels: int = 3,  # image channels
        feature_dim: int = 64,  # width of the penultimate layer (the Fréchet feature space)
    ):
        super().__init__()
        self.config = {
            "class_names": list(class_names),
            "image_size": image_size,
            "in_channels": in_channels,
            "feature_dim": feature_dim,
        }

        self.body = conv_body(in_channels, feature_dim)
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(feature_dim, len(class_names)))
        self.trained_on = ""  # the data description (RealSprites.description), saved beside the config
        self.data_source = ""  # which data (RealSprites.source), saved beside the config

    @property
    def class_names(self) -> list[str]:
        return self.config["class_names"]

    def check_input(self, x: torch.Tensor) -> None:
        size, channels = self.config["image_size"], self.config["in_channels"]
        if x.ndim != 4 or x.shape[1] != channels or tuple(x.shape[2:]) != (size, size):
            raise ValueError(
                f"The classifier takes (B, {channels}, {size}, {size}) images but got {tuple(x.shape)}; evaluate "
                f"a model of the same image size, or train a classifier on {tuple(x.shape[2:])} images."
            )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) in [-1, 1] -> penultimate features (B, feature_dim)."""
        self.check_input(x)
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) in [-1, 1] -> logits (B, num_classes)."""
        return self.head(self.features(x))

    @torch.no_grad()
    def predict(self, images: np.ndarray, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
        """(N, H, W, C) uint8 images -> (predicted labels (N,) int64, features (N, feature_dim) float64)."""
        self.eval()
        device = next(self.parameters()).device
        labels, features = [], []
        for start in range(0, len(images), batch_size):
            x = to_model_input(images[start : start + batch_size]).to(device)
            f = self.features(x)
            labels.append(self.head(f).argmax(dim=1).cpu())
            features.append(f.double().cpu())
        return torch.cat(labels).numpy(), torch.cat(features).numpy()


def train_classifier(
    images: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    epochs: int = 3,
    batch_size: int = 128,
    learning_rate: float = 3e-3,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    flip: bool = True,
) -> SpriteClassifier:
    """Train a SpriteClassifier on (N, H, W, C) uint8 images and (N,) labels: AdamW with a cosine-decayed learning
    rate, random horizontal flips when `flip` (right for sprites, which face both ways in every class; wrong for
    direction-dependent data such as digits). 20,000 sprites x 3 epochs take about half a minute on one CPU core."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(images) != len(labels):
        raise ValueError(f"Got {len(images)} images but {len(labels)} labels; give one label per image.")
    if labels.min() < 0 or labels.max() >= len(class_names):
        raise ValueError(
            f"Labels must be in 0..{len(class_names) - 1} (one per class name), got {labels.min()}..{labels.max()}."
        )
    torch.manual_seed(seed)
    model = SpriteClassifier(class_names, image_size=images.shape[1], in_channels=images.shape[3]).to(device)
    targets = torch.from_numpy(labels).to(device)
    return fit(
        model,
        images,
        lambda logits, index: nn.functional.cross_entropy(logits, targets[index]),
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
        progress=progress,
        desc="classifier",
        flip=flip,
    )


def train_classifier_on(
    real: RealSprites, epochs: int = 3, device: str | torch.device = "cpu", progress: bool = True
) -> SpriteClassifier:
    """train_classifier on `real`'s classifier part (its first num_classifier_train training images), flipping only
    where `real` says the data allows it; the result remembers `real.description` as its trained_on."""
    count = real.num_classifier_train or len(real.train_images)
    classifier = train_classifier(
        real.train_images[:count],
        real.train_labels[:count],
        real.class_names,
        epochs=epochs,
        device=device,
        progress=progress,
        flip=real.flip,
    )
    classifier.trained_on, classifier.data_source = real.description, real.source
    return classifier


def fit(
    model: nn.Module,
    images: np.ndarray,
    loss_fn,
    epochs: int = 3,
    batch_size: int = 128,
    learning_rate: float = 3e-3,
    seed: int = 0,
    progress: bool = True,
    desc: str = "classifier",
    flip: bool = True,
) -> nn.Module:
    """The classifiers' training loop: AdamW with a one-cycle learning rate, random horizontal flips of half the
    images when `flip` (an augmentation only for data whose classes survive a mirror). `loss_fn(model(x), index)` gets
    the batch's outputs and its row indices (on the model's device) into `images` (N, H, W, C) uint8. Returns the model in eval mode."""
    device = next(model.parameters()).device
    x_all = to_model_input(images).to(device)
    steps_per_epoch = max(1, len(images) // batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, learning_rate, total_steps=epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    bar = tqdm(total=epochs * steps_per_epoch, desc=desc, disable=not progress)
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator).to(device)
        for step in range(steps_per_epoch):
            index = order[step * batch_size : (step + 1) * batch_size]
            x = x_all[index]
            if flip:
                mirrored = torch.rand(len(x), generator=generator).to(device) < 0.5
                x = torch.where(mirrored[:, None, None, None], x.flip(-1), x)
            loss = loss_fn(model(x), index)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    return model.eval()


def save_classifier(model: SpriteClassifier, folder: str | os.PathLike, trained_on: str = "") -> None:
    """Write `folder`/classifier.safetensors and `folder`/classifier_config.json (class names, input size, data)."""
    trained_on = trained_on or model.trained_on
    config = {**model.config, "trained_on": trained_on, "data_source": model.data_source}
    save_module(model, folder, CLASSIFIER_WEIGHTS, CLASSIFIER_CONFIG, config)


def load_classifier(folder: str | os.PathLike, device: str | torch.device = "cpu") -> SpriteClassifier:
    """Load a classifier written by save_classifier (safetensors only; nothing is unpickled)."""
    config, state = read_module(folder, CLASSIFIER_WEIGHTS, CLASSIFIER_CONFIG, "hfdiff train-classifier")
    trained_on, data_source = config.pop("trained_on", ""), config.pop("data_source", "")
    model = SpriteClassifier(**config)
    model.load_state_dict(state)
    model.trained_on, model.data_source = trained_on, data_source
    return model.to(device).eval()


def save_module(model: nn.Module, folder: str | os.PathLike, weights_name: str, config_name: str, config: dict):
    """`folder`/`weights_name` (safetensors state dict) and `folder`/`config_name` (JSON `config`)."""
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, os.path.join(folder, weights_name))
    with open(os.path.join(folder, config_name), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)


def read_module(folder: str | os.PathLike, weights_name: str, config_name: str, maker: str) -> tuple[dict, dict]:
    """(config, state dict) of a module written by save_module; `maker` names the command that writes one."""
    from safetensors.torch import load_file

    config_path = os.path.join(folder, config_name)
    weights_path = os.path.join(folder, weights_name)
    for path in (config_path, weights_path):
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path} does not exist: {folder} is not a saved classifier (make one with `{maker}`)."
            )
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    return config, load_file(weights_path)


def check_classifier_data(folder: str | os.PathLike, real: RealSprites) -> None:
    """Refuse the saved classifier in `folder` for scoring against `real` when it was trained on other data (another
    --train_data_dir, say): its classes and accuracy would belong to that data, without a word. Classifiers saved
    without a data source are taken as they are."""
    path = os.path.join(folder, CLASSIFIER_CONFIG)
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    source = saved.get("data_source") if isinstance(saved, dict) else None
    if source and real.source and source != real.source:
        raise ValueError(
            f"The classifier in {folder} was trained on {source} ({saved.get('trained_on') or 'no description'}), "
            f"not on the data given now, {real.source}. Pass --classifier with another folder (a classifier is "
            f"trained there on this data), or delete {folder} to train it again here."
        )


def classifier_trained_on(folder: str | os.PathLike) -> str | None:
    """The data description stored with a saved classifier, or None when there is no classifier in `folder`."""
    path = os.path.join(folder, CLASSIFIER_CONFIG)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f).get("trained_on", "")


# ----------------------------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------------------------


def conditional_accuracy(predicted: np.ndarray, target: np.ndarray, class_names: Sequence[str]) -> dict:
    """{"accuracy": share of all images whose predicted label equals the class they were generated for,
    "per_class": {name: that share among the images of the class (NaN when it has none)}}."""
    predicted, target = np.asarray(predicted), np.asarray(target)
    if predicted.shape != target.shape:
        raise ValueError(f"predicted has shape {predicted.shape} but target {target.shape}; give one label each.")
    correct = predicted == target
    per_class = {
        name: float(correct[target == k].mean()) if (target == k).any() else float("nan")
        for k, name in enumerate(class_names)
    }
    return {"accuracy": float(correct.mean()) if correct.size else float("nan"), "per_class": per_class}


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N_a, F) and (N_b, F):
    ||mu_a - mu_b||^2 + Tr(S_a) + Tr(S_b) - 2 Tr((S_a S_b)^(1/2)).

    Tr((S_a S_b)^(1/2)) is computed as the sum of square roots of the eigenvalues of S_a^(1/2) S_b S_a^(1/2): that
    matrix is symmetric positive semi-definite and has the eigenvalues of S_a S_b, so eigh gives real values (no
    sqrtm with its stray imaginary parts, no scipy); eigenvalues a hair below 0 from rounding are clamped to 0."""
    a, b = np.asarray(features_a, dtype=np.float64), np.asarray(features_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"Feature sets must be (N, F) with the same F, got {a.shape} and {b.shape}.")
    if min(len(a), len(b)) < 2:
        raise ValueError("The Fréchet distance needs at least two images in each set to estimate a covariance.")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    eigvals, eigvecs = np.linalg.eigh(cov_a)
    sqrt_a = (eigvecs * np.sqrt(np.clip(eigvals, 0, None))) @ eigvecs.T
    middle = sqrt_a @ cov_b @ sqrt_a
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    distance = ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt
    return float(max(distance, 0.0))


def standard_fid_status() -> tuple[bool, str]:
    """(available, reason): standard FID runs only when torch-fidelity is installed and its Inception weights are
    already in the torch hub cache, so that nothing is downloaded."""
    if importlib.util.find_spec("torch_fidelity") is None:
        return False, "torch-fidelity is not installed"
    path = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS
    if not path.is_file():
        return False, f"torch-fidelity's Inception weights are not in the local cache ({path}); hfdiff never downloads"
    return True, str(path)


def standard_fid(generated: np.ndarray, real: np.ndarray) -> float:
    """FID (Inception v3 features, torch-fidelity) between two (N, H, W, 3) uint8 sets; images are resized to 299
    by torch-fidelity. Call only when standard_fid_status() says it is available."""
    import torch_fidelity

    available, weights = standard_fid_status()
    if not available:
        raise RuntimeError(f"Standard FID is unavailable: {weights}.")

    class Images(torch.utils.data.Dataset):
        def __init__(self, array):
            self.array = array

        def __len__(self):
            return len(self.array)

        def __getitem__(self, i):
            return torch.from_numpy(np.ascontiguousarray(self.array[i])).permute(2, 0, 1)  # (3, H, W) uint8

    metrics = torch_fidelity.calculate_metrics(
        input1=Images(generated),
        input2=Images(real),
        fid=True,
        cuda=torch.cuda.is_available(),
        verbose=False,
        feature_extractor_weights_path=weights,
    )
    return float(metrics["frechet_inception_distance"])


# ----------------------------------------------------------------------------------------------------------------
# Generating and scoring
# ----------------------------------------------------------------------------------------------------------------


def generate_images(
    pipe,
    per_class: int,
    num_classes: int | None = None,
    batch_size: int = 250,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    eta: float | None = None,
    extra_noise: bool = True,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray | None, float]:
    """`per_class` images of each class (in batches), as the uint8 a real image file holds.

    Returns (images (N, H, W, C) uint8, labels (N,) int64 or None for an unconditional model, seconds spent
    sampling). An unconditional model gives per_class * num_classes images."""
    context_dim = pipe.unet.config.context_dim
    if context_dim is None:
        labels = None
        total = per_class * (num_classes or 1)
    else:
        labels = np.repeat(np.arange(context_dim if num_classes is None else num_classes), per_class)
        total = len(labels)
    pipe.set_progress_bar_config(disable=True)
    chunks, seconds = [], 0.0
    for start in tqdm(range(0, total, batch_size), desc="sampling", disable=not progress, leave=False):
        count = min(batch_size, total - start)
        _synchronize(pipe.device)
        begin = time.perf_counter()
        images = pipe(
            batch_size=count,
            class_labels=labels[start : start + count].tolist() if labels is not None else None,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            eta=eta,
            extra_noise=extra_noise,
            generator=generator,
            output_type="np",
        ).images
        _synchronize(pipe.device)
        seconds += time.perf_counter() - begin
        chunks.append(_to_uint8(images))
    return np.concatenate(chunks), labels, seconds


def pool_factor(image_size: int | Sequence[int], classifier: SpriteClassifier) -> int:
    """How much a model's (H, W) images are average-pooled before `classifier` scores them: 1 at its size; the whole
    ratio when larger by one and the classifier knows procedural sprites; otherwise a ValueError that says the fix.

    Pooling is exact only for procedural sprites: training makes them larger by whole-number pixel repetition
    (hfdiff.training.data.resize_images), so a 64x64 training image pooled 4x4 is the 16x16 sprite it came from and
    the 16x16 classifier and reference score the model's images at the resolution that holds all their detail."""
    height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    size = classifier.config["image_size"]
    if (height, width) == (size, size):
        return 1
    factor = height // size
    if height == width and height % size == 0 and PROCEDURAL_SPRITES in classifier.trained_on:
        return factor
    raise ValueError(
        f"The model makes {height}x{width} images but the classifier takes {size}x{size} ones (trained on "
        f"{classifier.trained_on or 'unknown data'}); only procedural-sprite classifiers score a whole multiple of "
        f"their size (by average pooling). Train a classifier at the model's size on its training data: hfdiff "
        f"train-classifier --train_data_dir DIR (or --dataset_name NAME) --resolution {height} --output_dir "
        "MODEL/classifier, or pass the same flags to hfdiff evaluate."
    )


def fit_to_classifier(images: np.ndarray, classifier: SpriteClassifier) -> np.ndarray:
    """(N, H, W, C) uint8 -> the same average-pooled by pool_factor (rounded back to uint8), logged once per size."""
    factor = pool_factor(images.shape[1:3], classifier)
    if factor == 1:
        return images
    if (images.shape[1], factor) not in _POOLINGS_LOGGED:
        _POOLINGS_LOGGED.add((images.shape[1], factor))
        logger.warning(
            "Scoring %dx%d images average-pooled %dx%d to the classifier's %dx%d (it was trained on procedural "
            "sprites, which training upscales by pixel repetition, so pooling its data gives the sprites back).",
            *images.shape[1:3],
            factor,
            factor,
            images.shape[1] // factor,
            images.shape[2] // factor,
        )
    n, height, width, channels = images.shape
    pooled = images.reshape(n, height // factor, factor, width // factor, factor, channels).mean(axis=(2, 4))
    return np.rint(pooled).astype(np.uint8)


def _to_uint8(images: np.ndarray) -> np.ndarray:
    """The pipeline's "np" output (N, H, W, C) in [0, 1] -> (N, H, W, C) uint8, the pixels its "pil" output (and so a
    saved PNG) holds: diffusers' own numpy_to_pil rounding, applied after the timed sampling."""
    arrays = np.stack([np.asarray(image) for image in VaeImageProcessor.numpy_to_pil(images)])
    return arrays[..., None] if arrays.ndim == 3 else arrays  # 1-channel models give grayscale (N, H, W)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def class_map(pipe, classifier: SpriteClassifier) -> list[int]:
    """For each context entry of `pipe`'s model, the classifier label of the same class (matched by name)."""
    context_dim = pipe.unet.config.context_dim
    names = pipe.class_names
    if names is None:
        if context_dim != len(classifier.class_names):
            raise ValueError(
                f"The model has {context_dim} unnamed classes but the classifier knows {len(classifier.class_names)}; "
                "train the classifier on the model's training data."
            )
        return list(range(context_dim))
    missing = [name for name in names if name not in classifier.class_names]
    if missing:
        raise ValueError(
            f"The classifier does not know the model's classes {missing} (it knows {classifier.class_names}); "
            "train it on the model's training data (hfdiff train-classifier, with --train_data_dir or --dataset_name "
            "for an image folder or a `datasets` set; hfdiff evaluate takes the same flags)."
        )
    return [classifier.class_names.index(name) for name in names]


def frechet_floor(classifier: SpriteClassifier, real: RealSprites, count: int) -> float:
    """FD between `count` training images and `count` held-out ones: the best a generator can expect at this size."""
    count = _check_count(real, count)
    _, train_features = classifier.predict(real.train_images[:count])
    _, heldout_features = classifier.predict(real.heldout_images[:count])
    return frechet_distance(train_features, heldout_features)


def _check_count(real: RealSprites, count: int) -> int:
    available = min(len(real.train_images), len(real.heldout_images))
    if count > available:
        raise ValueError(
            f"{count} generated images need as many real training and held-out images, but only {available} are "
            "available; generate fewer (smaller --per_class) or give more real data."
        )
    return count


def evaluate_pipeline(
    pipe,
    classifier: SpriteClassifier,
    real: RealSprites,
    per_class: int = 100,
    batch_size: int = 250,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    eta: float | None = None,
    extra_noise: bool = True,
    generator: torch.Generator | None = None,
    standard: bool = False,
    progress: bool = True,
) -> dict:
    """Generate `per_class` images per class with the pipeline's scheduler and score them.

    Returns {"images", "seconds", "images_per_second", "accuracy" (None when unconditional), "per_class",
    "frechet", "frechet_floor", "fid" (None unless `standard` and available), "fid_note"}."""
    _check_count(real, per_class * len(classifier.class_names))  # before minutes of sampling, not after
    images, labels, seconds = generate_images(
        pipe,
        per_class,
        num_classes=len(classifier.class_names),
        batch_size=batch_size,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        eta=eta,
        extra_noise=extra_noise,
        generator=generator,
        progress=progress,
    )
    images = fit_to_classifier(images, classifier)
    count = _check_count(real, len(images))
    result = {
        "images": int(len(images)),
        "seconds": seconds,
        "images_per_second": len(images) / seconds if seconds > 0 else float("inf"),
        **score_images(pipe, classifier, real, images, labels),
        "frechet_floor": frechet_floor(classifier, real, count),
        "fid": None,
        "fid_note": "not asked for",
    }
    if standard:
        available, note = standard_fid_status()
        result["fid_note"] = "computed" if available else f"skipped: {note}"
        if available:
            result["fid"] = standard_fid(images, real.train_images[:count])
    return result


def score_images(pipe, classifier: SpriteClassifier, real: RealSprites, images: np.ndarray, labels) -> dict:
    """Score generated (N, H, W, C) uint8 `images` of `pipe`'s classes `labels` (None when unconditional): {"accuracy"
    (None when unconditional), "per_class" (model class name -> accuracy), "frechet" (against as many real images)}.
    Images larger than the classifier's input are pooled to it where pool_factor allows."""
    predicted, features = classifier.predict(fit_to_classifier(images, classifier))
    _, real_features = classifier.predict(real.train_images[: len(images)])
    result = {"accuracy": None, "per_class": {}, "frechet": frechet_distance(features, real_features)}
    if labels is not None:
        mapping = np.asarray(class_map(pipe, classifier))  # model class k -> classifier label
        scores = conditional_accuracy(predicted, mapping[labels], classifier.class_names)
        result["accuracy"] = scores["accuracy"]
        model_order = [classifier.class_names[label] for label in mapping]
        result["per_class"] = {name: scores["per_class"][name] for name in model_order}
    return result


def format_metrics(metrics: dict) -> str:
    """A few readable lines of evaluate_pipeline's result."""
    lines = [
        f"images: {metrics['images']} in {metrics['seconds']:.1f} s ({metrics['images_per_second']:.1f} images/s)",
        f"Fréchet distance (classifier features): {metrics['frechet']:.3f}   "
        f"(floor, real vs held-out real of the same size: {metrics['frechet_floor']:.3f})",
    ]
    if metrics["accuracy"] is not None:
        lines.append(f"conditional accuracy: {metrics['accuracy']:.1%}")
        lines += [f"  {name:<14} {share:.1%}" for name, share in metrics["per_class"].items()]
    if metrics["fid"] is not None:
        lines.append(f"standard FID (Inception): {metrics['fid']:.2f}")
    elif metrics["fid_note"] != "not asked for":
        lines.append(f"standard FID {metrics['fid_note']}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# DDPM vs DDIM report
# ----------------------------------------------------------------------------------------------------------------


def ddpm_vs_ddim(
    pipe,
    classifier: SpriteClassifier,
    real: RealSprites,
    steps: Sequence[int | None] = (10, 25, 50, 100, None),
    samplers: Sequence[str] = tuple(REPORT_SAMPLERS),
    per_class: int = 50,
    batch_size: int = 250,
    guidance_scale: float | None = None,
    seed: int = 0,
    progress: bool = True,
) -> list[dict]:
    """Evaluate every (sampler, step count) pair of REPORT_SAMPLERS; None in `steps` is the full chain (T steps).
    Every row starts from the same seed. `guidance_scale` None: each sampler's own (hfdiff.samplers). Returns one
    dict per row: evaluate_pipeline's metrics plus "sampler", "steps" and "guidance_scale"."""
    from hfdiff.samplers import step_limit, with_sampler

    unknown = [name for name in samplers if name not in REPORT_SAMPLERS]
    if unknown:
        raise ValueError(f"Unknown samplers {unknown}; choose from {list(REPORT_SAMPLERS)}.")
    resolved = resolve_steps(steps, pipe.scheduler.config.num_train_timesteps)
    # One small untimed run first, so that the first timed row does not pay for warm-up (allocations, kernels).
    with_sampler(pipe, "ddim")(batch_size=2, num_inference_steps=2, output_type="np")
    rows = []
    jobs = [(name, s) for name in samplers for s in resolved]
    for name, count in tqdm(jobs, desc="report", disable=not progress):
        sampler, eta = REPORT_SAMPLERS[name]
        other = with_sampler(pipe, sampler)
        count = min(count, step_limit(sampler, other.scheduler.config.num_train_timesteps))
        guided = other.unet.config.context_dim is not None
        w = (
            (other.sampling_defaults["guidance_scale"] if guided else 1.0)
            if guidance_scale is None
            else guidance_scale
        )
        metrics = evaluate_pipeline(
            other,
            classifier,
            real,
            per_class=per_class,
            batch_size=batch_size,
            num_inference_steps=count,
            guidance_scale=w,
            eta=eta,
            generator=torch.Generator("cpu").manual_seed(seed),
            progress=progress,
        )
        rows.append({"sampler": name, "steps": count, "guidance_scale": w, **metrics})
    return rows


def resolve_steps(steps: Sequence[int | None], num_train_timesteps: int) -> list[int]:
    """Step counts with None read as the full chain (T); each must be in 1..T."""
    resolved = [num_train_timesteps if s is None else int(s) for s in steps]
    bad = [s for s in resolved if not 1 <= s <= num_train_timesteps]
    if bad:
        raise ValueError(f"Step counts {bad} are outside 1..{num_train_timesteps} (the model's training steps).")
    return resolved


def report_markdown(rows: Sequence[dict], title: str = "DDPM vs DDIM") -> str:
    """A markdown table of ddpm_vs_ddim's rows, with the Fréchet floor under it."""
    lines = [
        f"### {title}",
        "",
        "| sampler | steps | guidance | s / image | images / s | accuracy | Fréchet distance |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        accuracy = f"{row['accuracy']:.1%}" if row["accuracy"] is not None else "n/a"
        lines.append(
            f"| {row['sampler']} | {row['steps']} | {row.get('guidance_scale', 1.0):g} | "
            f"{row['seconds'] / row['images']:.4f} | "
            f"{row['images_per_second']:.1f} | {accuracy} | {row['frechet']:.3f} |"
        )
    if rows:
        lines += [
            "",
            f"{rows[0]['images']} images per row. Fréchet floor (real vs held-out real, same size): "
            f"{rows[0]['frechet_floor']:.3f}.",
        ]
    return "\n".join(lines) + "\n"


def report_plot(rows: Sequence[dict], title: str | None = None) -> PIL.Image.Image:
    """Fréchet distance (with the real-vs-real floor), conditional accuracy and seconds per image (log scale) against
    steps (log scale), a line per sampler. Needs matplotlib (`pip install "hfdiff[plots]"`)."""
    from hfdiff.visualize import figure_to_image, plot_figure

    samplers = list(dict.fromkeys(row["sampler"] for row in rows))
    steps = sorted({row["steps"] for row in rows})
    panels = [("frechet", "Fréchet distance (lower is better)", "FD", 1.0)]
    if any(row["accuracy"] is not None for row in rows):
        panels.append(("accuracy", "conditional accuracy (higher is better)", "%", 100.0))
    panels.append(("s_per_image", "seconds per image", "s / image (log)", 1.0))
    figure, axes = plot_figure(len(panels))
    for ax, (key, panel_title, ylabel, scale) in zip(axes, panels):
        for name in samplers:
            mine = sorted((r for r in rows if r["sampler"] == name), key=lambda r: r["steps"])
            values = [r["seconds"] / r["images"] if key == "s_per_image" else r[key] for r in mine]
            ax.plot([r["steps"] for r in mine], [np.nan if v is None else v * scale for v in values], "o-", label=name)
        if key == "frechet":
            ax.axhline(rows[0]["frechet_floor"], color="grey", linestyle="--", label="floor: real vs real")
        ax.set(title=panel_title, xlabel="sampling steps (log)", ylabel=ylabel, xscale="log")
        ax.set_yscale("log" if key == "s_per_image" else "linear")
        ax.set_xticks(steps, [str(s) for s in steps])
        ax.set_xticks([], minor=True)  # the step counts themselves, not a log axis' 20, 30, 40 ... ticks
        ax.grid(alpha=0.3)
    figure.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=len(samplers) + 1)
    if title:
        figure.suptitle(title)
    return figure_to_image(figure)


def write_report(rows: Sequence[dict], output_dir: str | os.PathLike, title: str = "DDPM vs DDIM") -> dict[str, str]:
    """Write report.md, report.json and report.png into `output_dir`; returns {kind: path}."""
    os.makedirs(output_dir, exist_ok=True)
    paths = {kind: os.path.join(output_dir, f"report.{kind}") for kind in ("md", "json", "png")}
    with open(paths["md"], "w", encoding="utf-8") as f:
        f.write(report_markdown(rows, title))
    with open(paths["json"], "w", encoding="utf-8") as f:
        json.dump(list(rows), f, indent=2)
    report_plot(rows, title).save(paths["png"])
    return paths
