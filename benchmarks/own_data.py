"""Quality on real image folders at the defaults: train through the CLI with no tuning flag, score every sampler.

What a user with a folder of their own gets: `accelerate launch train_conditional.py --train_data_dir FOLDER
--output_dir MODEL` and nothing else (the run's length, batch, preset and warm-up are chosen from the folder and the
device), then `hfdiff evaluate MODEL --train_data_dir FOLDER --sampler S` for each sampler: conditional accuracy and
Fréchet distance in the evaluation classifier's feature space beside the floor, the distance between two halves of
the real folder (so "FD <= floor" means as close to the real images as held-out real images are).

Folders (real images available offline, written from scikit-learn's bundled digits; no download):
- digits-32: the 1,797 8x8 digits, 10 classes, resized to 32x32 greyscale (bilinear);
- digits-32-4000: the same plus 2,203 copies shifted by up to 2 px, 4,000 images: the size a user's 4,000-image
  32x32 folder has, for timing; the copies are augmentations, not new handwriting;
- digits-8: the 1,797 digits at their own 8x8.

    python benchmarks/own_data.py --out results-dir                       # every folder, full default runs
    python benchmarks/own_data.py --out /tmp/own --folders digits-32 --max_train_steps 20 --per_class 10 \\
        --samplers dpm++ fast                                             # a reduced check that the script works

Writes DIR/results.json and DIR/results.md (the command, the machine, each run's first log line) and prints the
table last. --max_train_steps shortens every run and is printed in the table: such a run says the script works, not
what the defaults give. Folders are written with scikit-learn; on a machine without it, write them elsewhere with
`--write_only` and pass `--data DIR` here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDERS = {  # name -> (image side, number of images or None for the 1,797)
    "digits-32-4000": (32, 4000),
    "digits-32": (32, None),
    "digits-8": (8, None),
}
DEFAULT_SAMPLERS = ["dpm++", "fast", "ddim", "ddpm"]
# The first log line of a run (hfdiff.training.loop.log_run): "... 1,977 steps of 1,024 images (659 epochs; why)".
STEPS_LINE = re.compile(r"([\d,]+) steps of ([\d,]+) images \(([\d,]+) epochs; (.*?)\), warm-up")


def write_folders(data: str, names: list[str]) -> None:
    from digits_folder import write_digits_folder

    for name in names:
        folder = os.path.join(data, name)
        if not os.path.isdir(folder):
            size, count = FOLDERS[name]
            written = write_digits_folder(folder, size=size, count=count)
            print(f"wrote {written} images to {folder}", flush=True)


def tool(name: str) -> str:
    """`accelerate` or `hfdiff` from the environment running this script, else from PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), name)
    return beside if os.path.exists(beside) else name


def run(command: list[str], log: str) -> tuple[float, str]:
    """Run `command` with its output written to `log` as it comes (a long run can be followed with tail -f);
    -> (wall seconds, output). Raises with the log's tail on failure."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with open(log, "w", encoding="utf-8") as file:
        file.write(" ".join(command) + "\n\n")
        file.flush()
        start = time.perf_counter()
        result = subprocess.run(command, cwd=REPO, env=env, stdout=file, stderr=subprocess.STDOUT)
        seconds = time.perf_counter() - start
    with open(log, encoding="utf-8") as file:
        output = file.read()
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}); see {log}:\n{output[-3000:]}")
    return seconds, output


def train(args, folder: str, model: str, log: str) -> dict:
    command = [tool("accelerate"), "launch", "train_conditional.py", "--train_data_dir", folder, "--output_dir", model]
    if args.max_train_steps:
        command += ["--max_train_steps", str(args.max_train_steps)]
    seconds, output = run(command, log)
    first = next((line for line in output.splitlines() if STEPS_LINE.search(line)), "")
    match = STEPS_LINE.search(first)
    steps, batch, epochs, why = match.groups() if match else ("?", "?", "?", "?")
    return {"command": " ".join(command), "seconds": seconds, "steps": steps, "images_per_step": batch,
            "epochs": epochs, "why": why, "first_log_line": first.split("] ", 1)[-1]}  # fmt: skip


def evaluate(args, folder: str, model: str, sampler: str, guidance: float | None, log: str) -> dict:
    output = log.replace(".log", ".json")
    command = [tool("hfdiff"), "evaluate", model, "--train_data_dir", folder, "--sampler", sampler]
    command += ["--per_class", str(args.per_class), "--output", output, "--seed", "0"]
    if guidance is not None:
        command += ["--guidance_scale", str(guidance)]
    seconds, _ = run(command, log)
    with open(output, encoding="utf-8") as file:
        metrics = json.load(file)
    return {"sampler": sampler, "guidance_scale": guidance, "command": " ".join(command), "wall_seconds": seconds,
            **{key: metrics.get(key) for key in ("accuracy", "frechet", "frechet_floor", "seconds", "images")}}  # fmt: skip


def table(rows: list[dict]) -> str:
    lines = [
        "| folder | steps x images (epochs) | train s | sampler | w | accuracy | FD | floor | FD <= floor | sample s |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for row in rows:
        t = row["training"]
        for m in row["metrics"]:
            w = "default" if m["guidance_scale"] is None else f"{m['guidance_scale']:g}"
            ok = "yes" if m["frechet"] <= m["frechet_floor"] else "no"
            lines.append(
                f"| {row['folder']} | {t['steps']} x {t['images_per_step']} ({t['epochs']}) | {t['seconds']:.0f} | "
                f"{m['sampler']} | {w} | {100 * m['accuracy']:.1f}% | {m['frechet']:.2f} | {m['frechet_floor']:.2f} | "
                f"{ok} | {m['seconds']:.1f} |"
            )
    return "\n".join(lines)


def machine() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return f"CPU, {os.cpu_count()} logical cores ({platform.processor() or platform.machine()})"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="Folder for results.{md,json}, the models and the logs.")
    parser.add_argument(
        "--data", default=None, help="Folder holding (or to hold) the image folders; default OUT/data."
    )
    parser.add_argument("--folders", nargs="+", choices=list(FOLDERS), default=list(FOLDERS))
    parser.add_argument("--samplers", nargs="+", default=DEFAULT_SAMPLERS, help="hfdiff evaluate --sampler names.")
    parser.add_argument(
        "--guidance_scales", nargs="+", default=["default", "1.5"],
        help="'default' (hfdiff evaluate's own, no flag) and/or numbers.",
    )  # fmt: skip
    parser.add_argument("--per_class", type=int, default=100, help="Images generated per class and sampler.")
    parser.add_argument("--max_train_steps", type=int, default=None, help="Shorten every run (a check, not a result).")
    parser.add_argument("--write_only", action="store_true", help="Only write the folders (needs scikit-learn).")
    args = parser.parse_args(argv)
    guidance = [None if g == "default" else float(g) for g in args.guidance_scales]
    data = args.data or os.path.join(args.out, "data")
    os.makedirs(args.out, exist_ok=True)
    write_folders(data, args.folders)
    if args.write_only:
        return
    rows = []
    for name in args.folders:
        folder, model = os.path.join(data, name), os.path.join(args.out, "models", name)
        os.makedirs(os.path.join(args.out, "logs"), exist_ok=True)
        training = train(args, folder, model, os.path.join(args.out, "logs", f"train-{name}.log"))
        print(f"{name}: trained in {training['seconds']:.0f} s: {training['first_log_line']}", flush=True)
        metrics = []
        for sampler in args.samplers:
            for w in guidance:
                tag = f"{name}-{sampler}-w{'default' if w is None else w}".replace("+", "p")
                metrics.append(evaluate(args, folder, model, sampler, w, os.path.join(args.out, "logs", f"{tag}.log")))
        rows.append({"folder": name, "training": training, "metrics": metrics})
        with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as file:  # after every folder
            json.dump({"machine": machine(), "argv": sys.argv, "rows": rows}, file, indent=2)
    command = "python benchmarks/own_data.py " + " ".join(sys.argv[1:] if argv is None else argv)
    reduced = f" Every run shortened to --max_train_steps {args.max_train_steps}." if args.max_train_steps else ""
    text = [
        f"# Own image folders at the defaults ({machine()})",
        "",
        f"Command: `{command}`.{reduced} Training: `accelerate launch train_conditional.py --train_data_dir FOLDER "
        "--output_dir MODEL`; scoring: `hfdiff evaluate MODEL --train_data_dir FOLDER --sampler S`, "
        f"{args.per_class} images per class. 'floor': FD between the two halves of the real folder.",
        "",
        table(rows),
        "",
        *[f"- {row['folder']}: {row['training']['first_log_line']}" for row in rows],
    ]
    with open(os.path.join(args.out, "results.md"), "w", encoding="utf-8") as file:
        file.write("\n".join(text) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
