"""Where a cold start's compile time goes, and what shortens it (the cold-start target: the default command within 60 s of its training time), on one GPU.

    python benchmarks/cold_start.py                          # every variant, 1,500 steps of the default recipe each
    python benchmarks/cold_start.py --variants cold warm     # a subset

Each variant trains the default conditional recipe (`train_conditional.py`'s defaults, `--max_train_steps` steps, no
checkpoints) in a fresh Python process with its own empty inductor and Triton caches (except `warm`, which reuses
`cold`'s), so every variant pays the compile a user pays on a machine that has never compiled this model:

- cold: as shipped (since commit 4ed6ea6 without pointwise autotuning, `hfdiff.cuda.COMPILE_OPTIONS`).
- warm: `cold`'s caches again (what every later run of the same model pays).
- artifacts: empty caches, but first `torch.compiler.load_cache_artifacts` of what `cold` saved with
  `torch.compiler.save_cache_artifacts` (a cache carried from another machine with the same torch, Triton and GPU).
- pointwise-autotune: inductor's own default, `triton.autotune_pointwise = True` (several launch configs per
  pointwise kernel, benchmarked the first time each runs), as hfdiff compiled before. Its first run
  (`cold-start-h200.md`, commit 0424dbf) had the two the other way round: `cold` autotuned and a
  `no-pointwise-autotune` variant did not.
- early-pool: inductor's compile workers started before the data and the model are built (`maybe_warm_pool`, which
  inductor otherwise calls only when the first forward reaches it).
- lean: inductor's optional work that this model may not need switched off on top of hfdiff's options: its pattern
  matcher (joint-graph and post-grad rewrites, 2.4 s of the cold compile in `cold-start-h200.md`), the second fusion
  round that reorders loops (`loop_ordering_after_fusion`) and the size/stride asserts in the generated wrapper. Does
  a shorter compile keep the images/s?
- warm-cudnn-autotune, no-compile-cudnn-autotune: `warm` and `no-compile` with cuDNN's autotuning
  (`torch.backends.cudnn.benchmark = True`) in place of its heuristics, which training keeps since commit bf9441c
  (`use_fast_cuda_kernels`): what timing every convolution's algorithms in the warm-up costs, and what the timed
  algorithms buy. Their first run (`cold-start-h200-cudnn.md`, commit fc32468) had it the other way round: training
  autotuned, and `warm-heuristic` / `no-compile-heuristic` turned it off.
- lean-unsplit: `lean` without inductor's splitting of large reductions (the GroupNorm statistics) into two kernels.
- no-compile: `--no-compile`, the CUDA-graph step without torch.compile: what building the step costs without
  compiling, and the images/s that compiling buys. The default recipe trains 5.7M images; at the uncompiled graph
  step's 57k images/s (H100, `training-cuda.md`) against about 110k compiled, that is about 100 s of training against
  52 s, so a 53 s cold compile only breaks even there, while a warm one (11 s) pays.

Per variant: the process's wall time, the time hfdiff logs for building the step (compile, warm-up, capture), the
steady images/s, and torch's own compile-time breakdown. Results go to benchmarks/results/cold-start-<device>.md/json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
VARIANTS = (
    "cold",
    "warm",
    "artifacts",
    "pointwise-autotune",
    "early-pool",
    "no-compile",
    "lean",
    "lean-unsplit",
    "warm-cudnn-autotune",
    "no-compile-cudnn-autotune",
)
LEAN_OPTIONS = {"pattern_matcher": False, "loop_ordering_after_fusion": False, "size_asserts": False}
MARK = "COLD-START-RESULT "


def child(variant: str, artifacts: Path, train_args: list[str]) -> None:
    """One training run in this process, the variant's compile settings applied first; prints one result line."""
    import torch

    import hfdiff.training.loop as loop

    if variant == "pointwise-autotune":  # the options training's torch.compile passes, without hfdiff's choice
        loop.COMPILE_OPTIONS = {**loop.COMPILE_OPTIONS, "triton.autotune_pointwise": True}
    if variant.startswith("lean"):
        unsplit = {"split_reductions": False} if variant == "lean-unsplit" else {}
        loop.COMPILE_OPTIONS = {**loop.COMPILE_OPTIONS, **LEAN_OPTIONS, **unsplit}
    if variant.endswith("-cudnn-autotune"):
        shipped = loop.use_fast_cuda_kernels

        def autotuned_cuda_kernels():
            shipped()
            torch.backends.cudnn.benchmark = True

        loop.use_fast_cuda_kernels = autotuned_cuda_kernels
    if variant.startswith("no-compile"):
        train_args = [*train_args, "--no-compile"]
    if variant == "early-pool":
        from torch._inductor.async_compile import maybe_warm_pool

        maybe_warm_pool()  # what inductor itself calls on its first compile: the pool and its workers
    load_seconds = None
    if variant == "artifacts":
        loaded_start = time.perf_counter()
        torch.compiler.load_cache_artifacts(artifacts.read_bytes())
        load_seconds = time.perf_counter() - loaded_start
    from hfdiff.training import configure_script_logging, parse_config, train

    configure_script_logging()
    result = train(parse_config(train_args), conditional=True)
    saved_bytes = None
    if variant == "cold":
        blob = torch.compiler.save_cache_artifacts()
        if blob is not None:
            artifacts.write_bytes(blob[0])
            saved_bytes = len(blob[0])
    from torch._dynamo.utils import compile_times

    print(
        MARK
        + json.dumps(
            {
                "step_seconds": result.step_setup_seconds,
                "images_per_second": result.images_per_second,
                "seconds": result.seconds,
                "artifact_bytes": saved_bytes,
                "artifact_load_seconds": load_seconds,
                "compile_times": compile_times(repr="str", aggregate=True),
            }
        ),
        flush=True,
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--max_train_steps", type=int, default=1500)
    parser.add_argument("--workdir", default=None, help="where the caches and models go (default: a temporary folder)")
    parser.add_argument("--output", default=None, help="results path without extension (default: by device)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--artifacts", default=None, help=argparse.SUPPRESS)
    args, train_args = parser.parse_known_args(argv)
    if args.child:
        child(args.child, Path(args.artifacts), [*train_args, "--max_train_steps", str(args.max_train_steps)])
        return
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("cold_start.py measures the compiled CUDA path: it needs a GPU.")
    device = torch.cuda.get_device_name(0)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="cold-start-"))
    artifacts = work / "artifacts.bin"
    if {"artifacts", "warm", "warm-cudnn-autotune"} & set(args.variants) and "cold" not in args.variants:
        raise SystemExit("the artifacts and warm variants use what the cold variant saved: run it too.")
    rows = []
    for variant in args.variants:
        caches = work / ("cold" if variant.startswith("warm") else variant)
        env = dict(
            os.environ,
            TORCHINDUCTOR_CACHE_DIR=str(caches / "inductor"),
            TRITON_CACHE_DIR=str(caches / "triton"),
        )
        command = [
            sys.executable, __file__, "--child", variant, "--artifacts", str(artifacts),
            "--output_dir", str(work / f"model-{variant}"), "--overwrite_output_dir",
            "--max_train_steps", str(args.max_train_steps), "--checkpointing_steps", "0",
        ]  # fmt: skip
        start = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        (work / f"{variant}.log").write_text(done.stdout + done.stderr)
        found = [line[len(MARK) :] for line in done.stdout.splitlines() if line.startswith(MARK)]
        if done.returncode != 0 or not found:
            print(f"{variant}: exit {done.returncode}; log in {work / f'{variant}.log'}\n{done.stderr[-2000:]}")
            rows.append({"variant": variant, "wall_seconds": wall, "failed": done.returncode})
            continue
        row = {"variant": variant, "wall_seconds": wall, **json.loads(found[-1])}
        rows.append(row)
        print(
            f"{variant}: {wall:.1f} s in all, {row['step_seconds']:.1f} s building the step, "
            f"{row['images_per_second'] or 0:,.0f} images/s",
            flush=True,
        )
    write_results(rows, device, args, Path(args.output) if args.output else None)


def write_results(rows: list[dict], device: str, args, output: Path | None) -> None:
    import torch

    output = output or RESULTS / f"cold-start-{device.split()[-1].lower()}"
    command = f"python benchmarks/cold_start.py --max_train_steps {args.max_train_steps} --variants " + " ".join(
        args.variants
    )
    lines = [
        f"# Cold start: compiling the default recipe's step on {device}",
        "",
        f"`{command}` (torch {torch.__version__}). Each variant is a fresh process training the default conditional "
        f"recipe for {args.max_train_steps} steps with its own empty compile caches (`warm` reuses `cold`'s).",
        "",
        "| variant | process wall s | building the step s | images/s |",
        "| --- | ---: | ---: | ---: |",
    ]
    for row in rows:
        if "failed" in row:
            lines.append(f"| {row['variant']} | {row['wall_seconds']:.1f} | failed (exit {row['failed']}) | |")
            continue
        lines.append(
            f"| {row['variant']} | {row['wall_seconds']:.1f} | {row['step_seconds']:.1f} | "
            f"{row['images_per_second'] or 0:,.0f} |"
        )
    for row in rows:
        if row.get("artifact_bytes"):
            lines += ["", f"Cache artifacts saved by `cold`: {row['artifact_bytes'] / 1e6:.1f} MB."]
        if row.get("artifact_load_seconds") is not None:
            lines += [f"Loading them in `artifacts`: {row['artifact_load_seconds']:.2f} s."]
    for row in rows:
        if row.get("compile_times"):
            lines += ["", f"## torch's compile times, {row['variant']}", "", "```", row["compile_times"], "```"]
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".md").write_text("\n".join(lines) + "\n")
    output.with_suffix(".json").write_text(json.dumps({"device": device, "rows": rows}, indent=2) + "\n")
    print("\n".join(lines[: 8 + len(rows)]))


if __name__ == "__main__":
    main()
