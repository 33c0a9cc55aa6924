"""Few-step samplers on real images: scikit-learn's bundled digits as an image folder, trained through the CLI, every sampler
scored with hfdiff.evaluate's classifier accuracy and Fréchet distance (beside the real-vs-real floor).

Two steps, so that the second runs where scikit-learn is not installed (a GPU machine): copy the folder there.

    # 1. write the folder (needs scikit-learn; no download): DIR/0/0000.png ... DIR/9/1796.png, 8x8 greyscale
    python benchmarks/digits_folder.py --write_folder digits
    # 2. train (accelerate launch train_conditional.py --train_data_dir DIR --resolution 16, default recipe), train
    #    the evaluation classifier on the same folder, score each sampler at each guidance scale
    python benchmarks/digits_folder.py --train_data_dir digits --output_dir digits-model --num_epochs 5600 \\
        --per_class 100

The real images are read through the training scripts' own loader (hfdiff.training.data), so the classifier and the
Fréchet reference see exactly what the model was trained on: one channel (greyscale stays greyscale), 8x8 made
16x16 by pixel repetition (that loader's whole-number upscaling). They are shuffled once (--seed): the
classifier trains on the first half and is checked on the second; the floor is the FD between the two halves (at most
898 images each); generated images are compared with as many real images, in the shuffled order. The diffusion model
trains on all 1,797, so a model that memorised its data could go below the floor.

Writes OUTPUT.json and OUTPUT.md (default benchmarks/results/digits-folder-<device>) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE = "ddpm"  # hfdiff.samplers' DDPM over every training step: the FD ratios are against it
DEFAULT_SAMPLERS = ["ddpm", "dpm++", "fast", "ddim", "heun-25", "ddim-25-eta1"]
DIGIT_LEVELS = 16  # load_digits' pixels are 0..16


def write_digits_folder(folder: str, size: int = 8, count: int | None = None, seed: int = 0) -> int:
    """scikit-learn's digits (1,797 8x8 images, classes 0-9) as FOLDER/<digit>/<index>.png, 8-bit greyscale with
    the 0..16 levels mapped to 0..255 (ink is bright, as in load_digits). Returns the number of images written.

    `size` > 8 resizes each digit to size x size (bilinear, as a scanner at that resolution would see it), so the
    folder is what a user with their own 32x32 digits brings, with no --resolution flag. `count` > 1,797 adds
    copies of randomly chosen digits shifted by up to size/16 pixels each way (seeded by `seed`), to time a folder of
    that size; the copies are augmentations of the same 1,797 digits, not new handwriting."""
    import PIL.Image

    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ImportError(
            "--write_folder needs scikit-learn (pip install scikit-learn); write the folder on a machine that has "
            "it and copy the folder to this one."
        ) from error
    if os.path.isdir(folder) and os.listdir(folder):
        raise ValueError(f"--write_folder {folder} exists and is not empty; give a new folder or delete this one.")
    digits = load_digits()
    pixels = np.rint(digits.images * (255 / DIGIT_LEVELS)).astype(np.uint8)
    images = [PIL.Image.fromarray(image) for image in pixels]
    if size != 8:
        images = [image.resize((size, size), PIL.Image.BILINEAR) for image in images]
    labels = list(digits.target)
    if count is not None and count > len(images):
        rng = np.random.default_rng(seed)
        reach = max(1, size // 16)
        for source in rng.integers(0, len(pixels), count - len(pixels)):
            dx, dy = (int(v) for v in rng.integers(-reach, reach + 1, 2))
            images.append(images[source].transform(images[source].size, PIL.Image.AFFINE, (1, 0, dx, 0, 1, dy)))
            labels.append(digits.target[source])
    for index, (image, label) in enumerate(zip(images, labels)):
        os.makedirs(os.path.join(folder, str(label)), exist_ok=True)
        image.save(os.path.join(folder, str(label), f"{index:04d}.png"))
    return len(images)


def folder_size(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(folder) for name in names)


def train_command(args) -> list[str]:
    """What a user types: the conditional training script under `accelerate launch`, default recipe."""
    script = os.path.relpath(os.path.join(REPO, "train_conditional.py"))
    command = ["accelerate", "launch", script, "--train_data_dir", args.train_data_dir]
    command += ["--resolution", "16", "--output_dir", args.output_dir, "--num_epochs", str(args.num_epochs)]
    return command + args.train_args


def real_digits(folder: str, seed: int):
    """The folder through the training scripts' loader at the training --resolution (hfdiff.evaluate's
    real_training_data, the one `hfdiff evaluate --train_data_dir` uses): shuffled once, the classifier's half first."""
    from hfdiff import evaluate as ev

    return ev.real_training_data(train_data_dir=folder, resolution=16, seed=seed)


def verdicts(rows: list[dict]) -> list[str]:
    """The issue's two targets, per guidance scale."""
    lines = []
    for w in dict.fromkeys(row["guidance_scale"] for row in rows):
        mine = {row["sampler"]: row for row in rows if row["guidance_scale"] == w}
        reference = mine.get(REFERENCE)
        if reference is None:
            continue
        if "ddim" in mine:
            ratio = mine["ddim"]["fd_ratio"]
            lines.append(
                f"w={w:g}: DDIM-50 eta 0 FD / DDPM-500 FD = {ratio:.2f} ({'meets' if ratio <= 1.3 else 'misses'} <= 1.3)"
            )
        winners = [
            name
            for name, row in mine.items()
            if row["steps"] <= 25
            and row["frechet"] <= reference["frechet"]
            and row["accuracy"] >= reference["accuracy"]
        ]
        lines.append(
            f"w={w:g}: <= 25 steps with FD <= DDPM-500's and accuracy >= DDPM-500's: {', '.join(winners) or 'none'}"
        )
    return lines


def markdown(result: dict) -> str:
    scale = (
        f"**CPU-scale run** ({result['num_epochs']} epochs, {result['per_class']} images per class): a check that the "
        "script works end to end, not the issue's measurement (that is the full-scale GPU run)."
        if result["device_type"] == "cpu"
        else f"{result['num_epochs']} epochs, {result['per_class']} images per class."
    )
    lines = [
        f"# Digits image folder: few-step quality ({result['device']})",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Training: `{result['train_command']}` "
        + (
            "(run earlier; --skip_training)."
            if result["train_seconds"] is None
            else f"({result['train_seconds']:.0f} s)."
        ),
        "",
        scale,
        "",
        f"Real data: {result['real']}. Classifier: {result['classifier_epochs']} epochs on the first half, held-out "
        f"accuracy {result['classifier_heldout_accuracy']:.1%}. Fréchet floor (real vs held-out real, "
        f"{result['floor_images']} images each): {result['frechet_floor']:.2f}. Seed {result['seed']}.",
        "",
        "| sampler | steps | eta | w | accuracy | FD | FD / DDPM-500 | seconds |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['sampler']} | {row['steps']} | {row['eta']:g} | {row['guidance_scale']:g} | "
            f"{row['accuracy']:.1%} | {row['frechet']:.2f} | {row['fd_ratio']:.2f} | {row['seconds']:.1f} |"
        )
    lines += ["", *(f"- {line}" for line in result["verdicts"])]
    return "\n".join(lines) + "\n"


def device_tag(device: torch.device) -> str:
    if device.type != "cuda":
        return "cpu"
    return torch.cuda.get_device_name(device).split()[-1].lower()


def train_and_score(args) -> dict:
    from few_step_quality import evaluate_row  # one row of sampler scores, as the sprite benchmark writes it

    from hfdiff import SpriteDiffusionPipeline
    from hfdiff import evaluate as ev

    device = torch.device(args.device)
    command = train_command(args)
    begin = time.perf_counter()
    if not args.skip_training:
        subprocess.run(command, check=True)
    train_seconds = None if args.skip_training else time.perf_counter() - begin
    real = real_digits(args.train_data_dir, args.seed)
    half = real.num_classifier_train  # train_images[:half] and the held-out images are disjoint
    # No horizontal flips (real.flip is off for folders): a mirrored 2 or 7 is not a digit.
    classifier = ev.train_classifier_on(real, epochs=args.classifier_epochs, device=device, progress=False)
    predicted, _ = classifier.predict(real.heldout_images)
    heldout_accuracy = ev.conditional_accuracy(predicted, real.heldout_labels, real.class_names)["accuracy"]
    ev.save_classifier(classifier, os.path.join(args.output_dir, "classifier"), trained_on=real.description)
    count = args.per_class * len(real.class_names)
    pipe = SpriteDiffusionPipeline.from_pretrained(args.output_dir).to(device)
    rows = []
    for w in args.guidance_scales:
        for name in args.samplers:
            row = evaluate_row(pipe, name, classifier, real, args.per_class, w, args.seed, args.batch_size)
            rows.append(row)
            print(
                f"{name:>18} w={w:<4g} acc {row['accuracy']:.1%} FD {row['frechet']:.2f} {row['seconds']:.1f} s",
                flush=True,
            )
    for row in rows:
        reference = next(r for r in rows if r["sampler"] == REFERENCE and r["guidance_scale"] == row["guidance_scale"])
        row["fd_ratio"] = row["frechet"] / reference["frechet"]
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "device_type": device.type,
        "command": "python " + " ".join([os.path.relpath(__file__, REPO), *map(shlex.quote, args.argv)]),
        "train_command": shlex.join(command),
        "train_seconds": train_seconds,
        "num_epochs": args.num_epochs,
        "per_class": args.per_class,
        "seed": args.seed,
        "real": real.description,
        "classifier_epochs": args.classifier_epochs,
        "classifier_heldout_accuracy": heldout_accuracy,
        "floor_images": min(count, half),
        "frechet_floor": ev.frechet_floor(classifier, real, min(count, half)),
        "rows": rows,
        "verdicts": verdicts(rows),
    }


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write_folder", default=None, help="Write the digits folder here (needs scikit-learn).")
    parser.add_argument("--size", type=int, default=8, help="--write_folder: image side (8 = load_digits' own).")
    parser.add_argument(
        "--count", type=int, default=None, help="--write_folder: images (> 1,797 adds shifted copies)."
    )
    parser.add_argument("--train_data_dir", default=None, help="The digits folder (from --write_folder).")
    parser.add_argument("--output_dir", default="digits-model", help="Pipeline folder the training writes.")
    parser.add_argument(
        "--num_epochs",
        type=int,
        default=5600,
        help="Training epochs over the 1,797 digits. At the GPU batch of 1,024 an epoch is one update (the loop drops "
        "the remainder), so 5,600 epochs are about the updates (and images) of the GPU default run on sprites: 64 x 87.",
    )
    parser.add_argument("--skip_training", action="store_true", help="Score the pipeline already in --output_dir.")
    parser.add_argument("--samplers", nargs="+", default=DEFAULT_SAMPLERS, help=f"First must be {REFERENCE!r}.")
    parser.add_argument("--guidance_scales", type=float, nargs="+", default=[0.0, 1.5])
    parser.add_argument("--per_class", type=int, default=100)
    parser.add_argument("--classifier_epochs", type=int, default=30, help="~900 images: 7 steps an epoch.")
    parser.add_argument("--batch_size", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--output", default=None, help="OUTPUT.{md,json}; default benchmarks/results/digits-folder-<device>."
    )
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="After --: more train_conditional.py flags.")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.train_args = [a for a in args.train_args if a != "--"]
    if not args.write_folder and not args.train_data_dir:
        parser.error("Give --write_folder DIR (write the digits) or --train_data_dir DIR (train and score).")
    if args.train_data_dir and REFERENCE not in args.samplers:
        parser.error(f"--samplers must include {REFERENCE!r}: the FD ratios are against it.")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.write_folder:
        count = write_digits_folder(args.write_folder, args.size, args.count, args.seed)
        print(f"wrote {count} images to {args.write_folder} ({folder_size(args.write_folder) / 1e6:.1f} MB)")
    if not args.train_data_dir:
        return
    result = train_and_score(args)
    output = args.output or os.path.join(
        REPO, "benchmarks", "results", f"digits-folder-{device_tag(torch.device(args.device))}"
    )
    os.makedirs(os.path.dirname(output) or ".", exist_ok=True)
    with open(output + ".json", "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    with open(output + ".md", "w", encoding="utf-8") as f:
        f.write(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
