"""Start-up cost of text training's caption table: one caption per image against several, same run, same device.

    python benchmarks/bench_caption_table.py                              # the GPU default: 89,400 sprites
    python benchmarks/bench_caption_table.py --num_train_images 24000     # the CPU default (README's CPU example)

For each --captions_per_image value: the captions themselves (generator and grammar, on the host), how many distinct
captions the table holds, its size on the device, and the seconds the default text encoder (all-MiniLM-L6-v2) takes
to embed them as training does (`caption_table`, in order of first appearance) and, for the first value, also
shortest first (what padding each batch to its longest caption costs). Results go to
benchmarks/results/caption_table-<device>-<N>.{json,md}, with the command line.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import sys
import time

import torch

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_train_images", type=int, default=89_400)
    parser.add_argument("--captions_per_image", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    from hfdiff.data import generate_sprites, sprite_caption_sets
    from hfdiff.text import encode_text, load_text_encoder
    from hfdiff.training.context import ENCODE_BATCH_SIZE, caption_table

    _, labels, attributes = generate_sprites(args.num_train_images, seed=0, return_attributes=True)
    tokenizer, text_encoder = load_text_encoder()
    text_encoder.to(device)
    encode_text(tokenizer, text_encoder, ["warm-up"] * 8)  # the first call's one-off costs are nobody's
    rows = []
    for per_image in args.captions_per_image:
        start = time.perf_counter()
        sets = sprite_caption_sets(labels, attributes, seed=0, per_image=per_image)
        captions_seconds = time.perf_counter() - start
        flat = [caption for options in sets for caption in options]
        distinct = list(dict.fromkeys(flat))
        synchronize(device)
        start = time.perf_counter()
        table, _ = caption_table(flat, tokenizer, text_encoder, device)
        synchronize(device)
        row = {
            "captions_per_image": per_image,
            "distinct_captions": len(distinct),
            "table_mib": table.numel() * table.element_size() / 2**20,
            "choices_mib": len(flat) * 8 / 2**20 if per_image > 1 else 0.0,
            "captions_seconds": captions_seconds,
            "embed_seconds": time.perf_counter() - start,
        }
        if per_image == args.captions_per_image[0]:
            synchronize(device)
            start = time.perf_counter()
            by_length = sorted(distinct, key=len)
            encode_text(tokenizer, text_encoder, by_length, batch_size=ENCODE_BATCH_SIZE, device=device)
            synchronize(device)
            row["embed_seconds_shortest_first"] = time.perf_counter() - start
        rows.append(row)
        print(json.dumps(row), flush=True)

    name = "cpu" if device.type == "cpu" else torch.cuda.get_device_name(device).lower().replace(" ", "-")
    stem = RESULTS / f"caption_table-{name}-{args.num_train_images}"
    result = {
        "command": " ".join([pathlib.Path(sys.executable).name, *sys.argv]),
        "device": name,
        "threads": torch.get_num_threads(),
        "machine": platform.platform(),
        "rows": rows,
    }
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Caption table start-up, {args.num_train_images} sprites, {name} ({torch.get_num_threads()} threads)",
        "",
        f"`{result['command']}`",
        "",
        "| captions per image | distinct captions | table MiB | choices MiB | captions s | embed s "
        "| embed s (shortest first) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        by_length = row.get("embed_seconds_shortest_first")
        by_length = f"{by_length:.1f}" if by_length is not None else ""
        lines.append(
            f"| {row['captions_per_image']} | {row['distinct_captions']:,} | {row['table_mib']:.1f} | "
            f"{row['choices_mib']:.1f} | {row['captions_seconds']:.1f} | {row['embed_seconds']:.1f} | "
            f"{by_length} |"
        )
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(stem.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
