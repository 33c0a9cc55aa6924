"""Draw docs/guidance_sweep.png from the few-step quality results (benchmarks/few_step_quality.py tables).

    python docs/make_guidance_sweep.py

Reads every benchmarks/results/few-step-quality-h200-*.md, keeps the (model, sampler) pairs measured at more than two
guidance scales, and plots Fréchet distance and accuracy against guidance_scale.
"""

import glob
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_rows(path: str) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if len(cells) == 11 and cells[3].replace(".", "").isdigit():
                model, sampler, steps, w, accuracy, fd = cells[:6]
                rows.append(
                    {
                        "model": model,
                        "sampler": sampler,
                        "w": float(w),
                        "acc": float(accuracy.rstrip("%")),
                        "fd": float(fd),
                    }
                )
    return rows


def main() -> None:
    curves = {}
    for path in sorted(glob.glob(os.path.join(ROOT, "benchmarks/results/few-step-quality-h200-*.md"))):
        for row in read_rows(path):
            curves.setdefault((row["model"], row["sampler"]), []).append(row)
    curves = {key: sorted(rows, key=lambda r: r["w"]) for key, rows in curves.items() if len(rows) > 2}
    fig, (ax_fd, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for (model, sampler), rows in curves.items():
        label = f"{model}: {sampler}"
        style = "-" if sampler == "ddpm-500" else "--"
        ax_fd.plot([r["w"] for r in rows], [r["fd"] for r in rows], style, marker="o", label=label)
        ax_acc.plot([r["w"] for r in rows], [r["acc"] for r in rows], style, marker="o", label=label)
    ax_fd.set(xlabel="guidance_scale", ylabel="Fréchet distance (classifier features)", title="FD vs guidance")
    ax_acc.set(xlabel="guidance_scale", ylabel="class accuracy (%)", title="accuracy vs guidance", ylim=(95, 100.2))
    ax_fd.axvline(1.5, color="grey", lw=0.8, ls=":")
    ax_acc.axvline(1.5, color="grey", lw=0.8, ls=":")
    ax_fd.legend(fontsize=7)
    fig.suptitle("1,000 sprites per point, one H200; zero-snr recipe models (64 and 128 epochs); dotted: w = 1.5")
    fig.tight_layout()
    out = os.path.join(ROOT, "docs", "guidance_sweep.png")
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
