"""Does the caption embedding itself say which colour the captioned part has? (the named-colour gap of text models)

    python benchmarks/text_colour_probe.py                 # 8,000 procedural captions, all-MiniLM-L6-v2, CPU

For each sprite class, a logistic regression (scikit-learn, 3-fold cross-validation) reads the colour of the captioned
part (the attribute `hfdiff evaluate` scores as "colour") off the frozen text encoder's caption embedding, the vector
that becomes the UNet's context. If it reads the colour well where generated images miss it, the loss is in how the
UNet uses the context, not in the encoder. Results go to benchmarks/results/text-colour-probe.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    from hfdiff.data import SPRITE_CLASSES, generate_sprites, generate_sprites_with_captions
    from hfdiff.text import encode_text, load_text_encoder

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_captions", type=int, default=8000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--text_encoder_name_or_path", default=None, help="default: all-MiniLM-L6-v2 (the package)")
    args = parser.parse_args(argv)

    _, labels, captions = generate_sprites_with_captions(args.num_captions, seed=args.seed)
    _, same_labels, attributes = generate_sprites(args.num_captions, seed=args.seed, return_attributes=True)
    assert np.array_equal(labels, same_labels)  # the same sprites, with their ground truth
    tokenizer, encoder = load_text_encoder(args.text_encoder_name_or_path)
    start = time.perf_counter()
    with torch.no_grad():
        batches = [list(captions[i : i + 256]) for i in range(0, len(captions), 256)]
        embeddings = torch.cat([encode_text(tokenizer, encoder, batch) for batch in batches]).float().numpy()
    seconds = time.perf_counter() - start
    colour, words = np.asarray(attributes["colour"]), np.array([len(str(c).split()) for c in captions])
    rows = []
    for index, name in enumerate(SPRITE_CLASSES):
        mine = labels == index
        x, y = embeddings[mine], colour[mine]
        common = np.isin(y, [value for value in set(y) if (y == value).sum() >= 10])  # 3 folds need a few of each
        probe = LogisticRegression(max_iter=2000, C=10.0)
        accuracy = cross_val_score(probe, x[common], y[common], cv=3).mean()
        rows.append((name, int(mine.sum()), len(set(y)), float(words[mine].mean()), float(accuracy)))
    command = "python benchmarks/text_colour_probe.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [
        "# Caption embeddings: is the captioned part's colour linearly readable?",
        "",
        f"`{command.strip()}`: {args.num_captions} procedural captions (seed {args.seed}) embedded by "
        f"{args.text_encoder_name_or_path or 'all-MiniLM-L6-v2'} in {seconds:.0f} s; logistic regression, 3-fold "
        "cross-validation, per class (colours with at least 10 captions).",
        "",
        "| class | captions | colours | mean words | probe accuracy |",
        "| --- | ---: | ---: | ---: | ---: |",
        *(f"| {n} | {c} | {k} | {w:.1f} | {a:.1%} |" for n, c, k, w, a in rows),
    ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "text-colour-probe.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
