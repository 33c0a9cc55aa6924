"""Time hfdiff's fast sampling path (hfdiff.fast_sampling) beside the eager pipeline and diffusers' own pipelines.

    python benchmarks/bench_fast_sampling.py                   # CPU: 16 sprites, DDPM 100, DDIM 25, DPM++ 20 steps
    python benchmarks/bench_fast_sampling.py --batch_size 1000 --ddpm_steps 500 --compile --profile   # one GPU

One run times, with the same "sprite-small" UNet (random weights: speed does not depend on them) and T = 500 linear
schedules, alternating between runs so that drifts of the machine hit all alike:
- the references, built here from diffusers alone: DDPMPipeline (DDPM task), DDIMPipeline (DDIM task) and
  DDPMPipeline's loop with DPMSolverMultistepScheduler (DPM++ task: hfdiff.samplers' "dpm++", DPM-Solver++ 2M SDE);
- SpriteDiffusionPipeline's step-by-step loop ("eager") with SpriteDDPMScheduler / SpriteDDIMScheduler / the "dpm++"
  sampler's DPMSolverMultistepScheduler (built from the sprite schedule's config, as `with_sampler` builds it);
- SpriteDiffusionPipeline through hfdiff.fast_sampling.FastSampler, in several configurations on CUDA (the default
  one first) and as the same step function without graphs on the CPU.
Every run gets its own generator on the device, seeded 0: on CUDA the fast path then draws exactly the eager loop's
noise, so "max |diff|" compares images [0, 1] of the same trajectory (float32 rounding for the default fp32 graph,
bf16 against float32 for the bf16 variants). "first call s" includes what the fast path does once per graph key (UNet
copy, coefficients, warm-up with cuDNN autotuning and torch.compile, capture), broken out in "setup". Results go to benchmarks/results/fast_sampling-<device>.{json,md}; the command, device and
versions are recorded with them.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import sys
import time
import traceback
from pathlib import Path

import diffusers
import numpy as np
import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, DPMSolverMultistepScheduler
from diffusers.utils.torch_utils import randn_tensor

from hfdiff import ContextUNet2DModel, SpriteDDIMScheduler, SpriteDDPMScheduler, SpriteDiffusionPipeline
from hfdiff.fast_sampling import FastSampler
from hfdiff.samplers import get_sampler

RESULTS = Path(__file__).parent / "results"
TARGETS_S = {"DDPM": 0.4, "DDIM": 0.025}  # targets for 1,000 sprites, 500 DDPM / 25 DDIM steps, one H100

# Fast-path configurations timed on CUDA: name -> FastSampler options. The first is the default (faithful: the
# pipeline's UNet in its own dtype and layout), the second the bf16 switch; the guidance task times those two.
BF16 = {"dtype": torch.bfloat16}  # channels_last follows: a copy is made anyway
CUDA_VARIANTS = {
    "fast: graph, fp32, pipeline UNet as is (default)": {},
    "fast: graph, bf16, channels_last": BF16,
    "fast: graph, bf16, channels_last, cuDNN autotune": {**BF16, "cudnn_benchmark": True},
    "fast: graph, bf16, NCHW, cuDNN autotune": {**BF16, "channels_last": False, "cudnn_benchmark": True},
    "fast: graph, fp32, channels_last": {"channels_last": True},
    "fast: no graph, bf16, channels_last": {**BF16, "cuda_graphs": False},
}
# Timed last with --compile, most telling first (results are written after each): each compiles for ~13 s on first
# use, longer with inductor options ("max_autotune" times Triton convolution templates against cuDNN per shape).
MAX_AUTOTUNE = {"max_autotune": True, "coordinate_descent_tuning": True}  # = mode "max-autotune-no-cudagraphs"
COMPILE_VARIANTS = {
    "fast: graph + torch.compile, bf16, channels_last": {**BF16, "compile": True},
    "fast: graph + torch.compile, fp32": {"compile": True},
    # compile=True turns inductor's per-kernel timing of pointwise launch configs off (hfdiff.cuda.COMPILE_OPTIONS);
    # this row puts inductor's default back, to show what that costs in compile time and gains (or not) in replays
    "fast: graph + torch.compile (pointwise autotune), bf16, channels_last": {
        **BF16,
        "compile": {"triton.autotune_pointwise": True},
    },
    "fast: graph + torch.compile (max autotune), bf16, channels_last": {**BF16, "compile": MAX_AUTOTUNE},
    "fast: graph + torch.compile (coordinate descent), bf16, channels_last": {
        **BF16,
        "compile": {"coordinate_descent_tuning": True},
    },
    "fast: graph + torch.compile, bf16, NCHW": {**BF16, "compile": True, "channels_last": False},
    "fast: graph + torch.compile, bf16, NCHW, cuDNN autotune": {
        **BF16,
        "compile": True,
        "channels_last": False,
        "cudnn_benchmark": True,
    },
    "fast: graph + torch.compile (freezing), bf16, channels_last": {**BF16, "compile": {"freezing": True}},
    "fast: graph + torch.compile (max autotune), bf16, NCHW": {
        **BF16,
        "compile": MAX_AUTOTUNE,
        "channels_last": False,
    },
    "fast: graph + torch.compile (max autotune, freezing), bf16, channels_last": {
        **BF16,
        "compile": {**MAX_AUTOTUNE, "freezing": True},
    },
}


def fast_pipeline_call(pipe: SpriteDiffusionPipeline, options: dict, use_hook: bool):
    """A function that calls `pipe` with its denoising loop run by FastSampler(pipe, **options), and one that returns
    that sampler. Through the pipeline hook (benchmarks/NOTES-sampling.md) this is pipe(...) itself; otherwise the
    pipeline's own steps 1-3 and 5 around FastSampler.sample, as the hook runs them (also on the CPU, where the hook
    leaves the call to the pipeline's loop)."""
    if use_hook:
        pipe.enable_fast_sampling(**options)
        return lambda **kwargs: pipe(**kwargs).images, lambda: pipe._fast_sampler
    sampler = FastSampler(pipe, **options)

    def call(batch_size, num_inference_steps, generator, class_labels=None, guidance_scale=1.0, eta=0.0, **_):
        device, dtype = pipe._execution_device, pipe.unet.dtype
        pipe.check_inputs(batch_size, class_labels, None, guidance_scale, num_inference_steps, eta, True)
        context = pipe.prepare_context(class_labels, None, batch_size, device, dtype)
        if context is not None and guidance_scale != 1.0:
            context = torch.cat([torch.zeros_like(context), context])
        pipe.scheduler.set_timesteps(num_inference_steps, device=device)
        size = pipe.unet.config.sample_size
        shape = (batch_size, pipe.unet.config.in_channels, size, size)
        latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        x0 = sampler.sample(latents, context, guidance_scale=guidance_scale, eta=eta, generator=generator)
        return pipe.postprocess(x0, "np")

    return call, lambda: sampler


def eager_pipeline(unet, scheduler) -> SpriteDiffusionPipeline:
    pipe = SpriteDiffusionPipeline(unet=unet, scheduler=scheduler)
    if hasattr(pipe, "enable_fast_sampling"):
        pipe.enable_fast_sampling(False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_runs(runs: dict, device: torch.device, repeats: int, log) -> dict:
    """First call of each run (setup included), then `repeats` alternating timed calls. A run that raises is logged
    and dropped; the others go on."""
    results = {}
    for name, (fn, sampler) in runs.items():
        fast_sampler = sampler() if sampler else None  # None until the pipeline hook made its sampler
        captures_before = fast_sampler.stats["captures"] if fast_sampler else 0
        try:
            synchronize(device)
            start = time.perf_counter()
            images = fn()
            synchronize(device)
            first = time.perf_counter() - start
        except Exception:
            log(f"FAILED first call of {name!r}:\n{traceback.format_exc()}")
            continue
        setup = None
        if sampler and sampler() is not None:
            stats = sampler().stats
            recorded = stats["captures"] > captures_before
            setup = {
                "graph_recorded": recorded,
                "warmup_s": round(stats["warmup_s"], 3) if recorded or device.type == "cpu" else 0.0,
                "capture_s": round(stats["capture_s"], 4) if recorded else 0.0,
                "unet_copy_s": round(stats["unet_copy_s"], 4) if recorded else 0.0,
            }
        results[name] = {"fn": fn, "times": [], "first_s": first, "images": images, "setup": setup}
        log(f"first call {name}: {first:.3f} s; setup {setup}")
    for _ in range(repeats):
        for name, result in results.items():
            synchronize(device)
            start = time.perf_counter()
            result["images"] = result["fn"]()
            synchronize(device)
            result["times"].append(time.perf_counter() - start)
    return results


def rows_for(task: str, results: dict, reference: str, eager: str, target: float | None) -> list[dict]:
    rows = []
    reference_median = statistics.median(results[reference]["times"]) if reference in results else None
    eager_images = np.asarray(results[eager]["images"]) if eager in results else None
    for name, result in results.items():
        median = statistics.median(result["times"])
        diff = None
        if eager_images is not None and name != eager and not name.startswith("diffusers"):
            difference = np.abs(np.asarray(result["images"]) - eager_images)
            diff = {"max": round(float(difference.max()), 4), "mean": round(float(difference.mean()), 5)}
        rows.append(
            {
                "task": task,
                "run": name,
                "median_s": round(median, 4),
                "min_s": round(min(result["times"]), 4),
                "first_call_s": round(result["first_s"], 3),
                "ratio_to_reference": round(median / reference_median, 4) if reference_median else None,
                "target_s": target,
                "meets_target": None if target is None else median <= target,
                "setup": result["setup"],
                "diff_vs_eager": diff,
            }
        )
    return rows


def floors(unet, batch_size: int, device: torch.device) -> dict:
    """Arithmetic and memory floors of one denoising step, from counted FLOPs and bytes of the eager UNet."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves
    from torch.utils.flop_counter import FlopCounterMode

    class ByteCounter(TorchDispatchMode):
        """Bytes every aten op reads and writes: the traffic of the unfused eager UNet."""

        def __init__(self):
            super().__init__()
            self.bytes = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for tensor in tree_leaves((args, kwargs, out)):
                if isinstance(tensor, torch.Tensor):
                    self.bytes += tensor.numel() * tensor.element_size()
            return out

    x = torch.randn(batch_size, 3, 16, 16, device=device)
    t = torch.tensor(250, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as flop_counter:
        unet(x, t)
    with torch.no_grad(), ByteCounter() as byte_counter:
        unet(x, t)
    result = {"flop_per_step": flop_counter.get_total_flops(), "fp32_bytes_per_step_unfused": byte_counter.bytes}
    if device.type == "cuda":
        a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
        big = torch.empty(2**28, device=device)  # 1 GiB
        for _ in range(2):
            a @ a
            big.clone()
        synchronize(device)
        start = time.perf_counter()
        for _ in range(10):
            a @ a
        synchronize(device)
        result["bf16_matmul_tflops"] = round(10 * 2 * 8192**3 / (time.perf_counter() - start) / 1e12, 1)
        start = time.perf_counter()
        for _ in range(10):
            big.clone()
        synchronize(device)
        result["copy_tb_per_s"] = round(10 * 2 * big.numel() * 4 / (time.perf_counter() - start) / 1e12, 2)
        del a, big
    return result


def kernel_kind(name: str) -> str:
    """A GPU kernel's family, from its name: convolution (cuDNN or a Triton template), fused Triton, or other."""
    if name.startswith("triton_tem"):
        return "Triton convolution / matmul templates (max autotune)"
    if name.startswith("triton"):
        return "fused Triton kernels (inductor)"
    if any(key in name for key in ("conv", "xmma", "implicit_gemm", "cudnn", "fprop", "cutlass", "nhwckrsc")):
        return "cuDNN convolutions"
    if "gemm" in name or name.startswith("nvjet"):
        return "cuBLAS matmuls"
    return "other (eager aten kernels, copies)"


def profile_fast(
    pipe, options: dict, batch_size: int, steps: int, device: torch.device, top: int = 20, graphs_only: bool = False
) -> dict:
    """torch.profiler over the fast path: `steps` replays of the graph (their kernels), and the same step function
    run without a graph, where each kernel is also charged to the aten op that launched it (where the time goes)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    def table(events, total):
        events = sorted(events, key=lambda e: e.self_device_time_total, reverse=True)[:top]
        return [
            {
                "name": e.key[:90],
                "calls": e.count,
                "self_gpu_ms": round(e.self_device_time_total / 1e3, 3),
                "share": round(e.self_device_time_total / total, 3) if total else None,
            }
            for e in events
        ]

    report = {}
    for label, cuda_graphs in (("graph replays", True), ("same step, no graph", False))[: 1 if graphs_only else 2]:
        sampler = FastSampler(pipe, **{**options, "cuda_graphs": cuda_graphs})
        pipe.scheduler.set_timesteps(steps, device=device)
        latents = torch.randn(batch_size, 3, 16, 16, device=device)
        sampler.sample(latents, generator=torch.Generator(device).manual_seed(0))  # record / warm up
        synchronize(device)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            sampler.sample(latents, generator=torch.Generator(device).manual_seed(0))
            synchronize(device)
        events = [e for e in prof.key_averages() if e.self_device_time_total > 0]
        kernels = [e for e in events if e.device_type != DeviceType.CPU]  # device-side kernel records
        ops = [e for e in events if e.device_type == DeviceType.CPU and e.key.startswith("aten::")]
        total = sum(e.self_device_time_total for e in kernels)
        kinds = {}
        for event in kernels:
            kind = kernel_kind(event.key)
            kinds[kind] = kinds.get(kind, 0.0) + event.self_device_time_total / 1e3
        report[label] = {
            "steps": steps,
            "gpu_time_ms_sum_of_kernels": round(total / 1e3, 3),
            "by_kind_ms": {kind: round(ms, 3) for kind, ms in sorted(kinds.items(), key=lambda item: -item[1])},
            "top": table(kernels, total),
        }
        if ops:
            report[label]["top_aten_ops"] = table(ops, total)
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--ddpm_steps", type=int, default=100)
    parser.add_argument("--ddim_steps", type=int, default=25)
    parser.add_argument("--dpm_steps", type=int, default=get_sampler("dpm++").num_inference_steps)
    parser.add_argument("--guidance_scale", type=float, default=3.0, help="for the DDIM + guidance task")
    parser.add_argument("--preset", default="sprite-small")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also time FastSampler(compile=True) (CUDA)")
    parser.add_argument("--profile", action="store_true", help="torch.profiler summary of the fast path (CUDA)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--log", default=None, help="also write progress lines to this file")
    parser.add_argument("--only", default=None, help="regex: time only the fast variants whose names match")
    args = parser.parse_args(argv)
    device = torch.device(args.device)

    def log(line: str) -> None:
        print(line, flush=True)
        if args.log:
            with open(args.log, "a", encoding="utf-8") as f:
                f.write(line + "\n")

    torch.manual_seed(0)
    unet = ContextUNet2DModel.from_preset(args.preset).to(device).eval()
    schedule = {"num_train_timesteps": 500, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear"}

    def generator() -> torch.Generator:
        return torch.Generator(device).manual_seed(0)

    variants = CUDA_VARIANTS if device.type == "cuda" else {"fast: same step function, no graph (CPU)": {}}
    compile_variants = COMPILE_VARIANTS
    if args.only:
        variants = {name: options for name, options in variants.items() if re.search(args.only, name)} or {
            next(iter(variants)): {}  # the guidance task times the default
        }
        compile_variants = {name: options for name, options in compile_variants.items() if re.search(args.only, name)}
    use_hook = hasattr(SpriteDiffusionPipeline, "enable_fast_sampling") and device.type == "cuda"
    hook = "pipeline hook" if use_hook else "benchmark shim"
    log(f"device {device}, fast path through the {hook}")

    # One pipeline per fast variant, its scheduler swapped per task as a user would: the sampler reads
    # pipe.scheduler on every call, so the DDPM and DDIM tasks replay the same recorded graph.
    def fast_variant(options: dict):
        pipe = SpriteDiffusionPipeline(unet=unet, scheduler=SpriteDDPMScheduler(**schedule))
        pipe.set_progress_bar_config(disable=True)
        return (pipe, *fast_pipeline_call(pipe, options, use_hook))

    fast = {name: fast_variant(options) for name, options in variants.items()}
    dpm_overrides = dict(get_sampler("dpm++").overrides)  # algorithm_type="sde-dpmsolver++", solver_order=2
    tasks = {
        "DDPM": (
            DDPMPipeline,
            DDPMScheduler(**schedule, variance_type="fixed_large"),
            SpriteDDPMScheduler(**schedule),
        ),
        "DDIM": (DDIMPipeline, DDIMScheduler(**schedule), SpriteDDIMScheduler(**schedule)),
        # diffusers has no pipeline of its own for DPM-Solver: DDPMPipeline's loop steps any scheduler
        "DPM++": (
            DDPMPipeline,
            DPMSolverMultistepScheduler(**schedule, **dpm_overrides),
            DPMSolverMultistepScheduler.from_config(SpriteDDPMScheduler(**schedule).config, **dpm_overrides),
        ),
    }
    task_steps = {"DDPM": args.ddpm_steps, "DDIM": args.ddim_steps, "DPM++": args.dpm_steps}
    eager_name = "SpriteDiffusionPipeline eager"
    task_runs = {}  # task -> (results by run name, reference run, call arguments, scheduler, target s)
    for kind, (reference_cls, reference_scheduler, scheduler) in tasks.items():
        steps = task_steps[kind]
        common = {"batch_size": args.batch_size, "num_inference_steps": steps, "output_type": "np"}
        reference = reference_cls(unet=unet, scheduler=reference_scheduler)
        reference.set_progress_bar_config(disable=True)
        eager = eager_pipeline(unet, scheduler)
        solver = f" + {type(reference_scheduler).__name__}" if kind == "DPM++" else ""
        reference_name = f"diffusers {reference_cls.__name__}{solver} (reference)"
        runs = {
            reference_name: (lambda pipe=reference, common=common: pipe(generator=generator(), **common).images, None),
            eager_name: (lambda pipe=eager, common=common: run_pipe(pipe, generator, common), None),
        }
        for name, (pipe, call, sampler) in fast.items():
            pipe.scheduler = scheduler
            runs[name] = (lambda call=call, common=common: call(generator=generator(), **common), sampler)
        log(f"== {kind}: {args.batch_size} sprites x {steps} steps")
        issue_config = (
            device.type == "cuda" and args.batch_size == 1000 and steps == {"DDPM": 500, "DDIM": 25}.get(kind)
        )
        target = TARGETS_S[kind] if issue_config else None
        task_runs[kind] = (time_runs(runs, device, args.repeats, log), reference_name, common, scheduler, target)

    # Classifier-free guidance (2B images per forward pass, a graph key of its own); no diffusers pipeline has it.
    common = {
        "batch_size": args.batch_size,
        "num_inference_steps": args.ddim_steps,
        "class_labels": [i % 5 for i in range(args.batch_size)],
        "guidance_scale": args.guidance_scale,
        "output_type": "np",
    }
    eager = eager_pipeline(unet, SpriteDDIMScheduler(**schedule))
    runs = {eager_name: (lambda: run_pipe(eager, generator, common), None)}
    for name in list(variants)[:2]:  # the first two left: the default (fp32) and bf16, unless --only dropped them
        pipe, call, sampler = fast[name]
        pipe.scheduler = tasks["DDIM"][2]  # the tasks above left the last one's (DPM++) there
        runs[name] = (lambda call=call: call(generator=generator(), **common), sampler)
    log(f"== DDIM + guidance w={args.guidance_scale}: {args.batch_size} sprites x {args.ddim_steps} steps")
    task_runs["DDIM + guidance"] = (time_runs(runs, device, args.repeats, log), eager_name, common, None, None)

    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "fast_path_through": hook,
        "config": vars(args),
    }

    def finish():
        rows = []
        for task, (results, reference_name, _, _, target) in task_runs.items():
            rows += rows_for(task, results, reference_name, eager_name, target)
        result["rows"] = rows
        write_results(result, device)

    try:
        result["floors"] = floors(unet, args.batch_size, device)
    except Exception:
        log(f"FAILED floors:\n{traceback.format_exc()}")
    if args.profile and device.type == "cuda":
        try:
            profile_pipe = SpriteDiffusionPipeline(unet=unet, scheduler=SpriteDDIMScheduler(**schedule))
            result["profile"] = profile_fast(profile_pipe, {}, args.batch_size, args.ddim_steps, device)
        except Exception:
            log(f"FAILED profile:\n{traceback.format_exc()}")
    finish()

    # torch.compile last: its first call compiles for a minute or more, and the results above are already written.
    if args.compile and device.type == "cuda":
        for name, options in compile_variants.items():
            pipe, call, sampler = fast_variant(options)
            for task in tasks:
                results, _, common, scheduler, _ = task_runs[task]
                pipe.scheduler = scheduler
                log(f"== {task}: {name}")
                runs = {name: (lambda call=call, common=common: call(generator=generator(), **common), sampler)}
                results.update(time_runs(runs, device, args.repeats, log))
            if args.profile:
                try:
                    profile_pipe = SpriteDiffusionPipeline(unet=unet, scheduler=SpriteDDIMScheduler(**schedule))
                    report = profile_fast(
                        profile_pipe, options, args.batch_size, args.ddim_steps, device, graphs_only=True
                    )
                    result.setdefault("profile", {})[f"{name}, graph replays"] = report["graph replays"]
                except Exception:
                    log(f"FAILED profile of {name!r}:\n{traceback.format_exc()}")
            finish()


def run_pipe(pipe, generator, common: dict):
    return pipe(generator=generator(), **common).images


def write_results(result: dict, device: torch.device) -> None:
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"fast_sampling-{device.type}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    config = result["config"]
    lines = [
        f"# Fast sampling: hfdiff.fast_sampling vs the eager pipeline and diffusers ({result['device']})",
        "",
        f"`{result['command']}` — torch {result['torch']}, diffusers {result['diffusers']}, CUDA {result['cuda']}, "
        f"preset {config['preset']}, {config['batch_size']} sprites, median of {config['repeats']} alternating runs "
        f"after one first call. Fast path through the {result['fast_path_through']}. Ratio < 1 is faster than the "
        "reference (diffusers' pipeline; the eager pipeline for guidance). max/mean |diff|: images in [0, 1] against "
        "the eager pipeline from the same generator.",
        "",
        "| task | run | median s | min s | first call s | ratio | target s | max / mean diff |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in result["rows"]:
        target = "" if r["target_s"] is None else f"{r['target_s']} ({'met' if r['meets_target'] else 'missed'})"
        diff = "" if r["diff_vs_eager"] is None else f"{r['diff_vs_eager']['max']} / {r['diff_vs_eager']['mean']}"
        lines.append(
            f"| {r['task']} | {r['run']} | {r['median_s']} | {r['min_s']} | {r['first_call_s']} | "
            f"{r['ratio_to_reference']} | {target} | {diff} |"
        )
    setups = [r for r in result["rows"] if r["setup"] and r["setup"]["graph_recorded"]]
    if setups:
        lines += ["", "Setup of the first call per graph key (cached on the sampler afterwards):", ""]
        lines += ["| task | run | UNet copy s | warm-up s (cuDNN autotune, compile) | capture s |"]
        lines += ["| --- | --- | ---: | ---: | ---: |"]
        for r in setups:
            s = r["setup"]
            lines.append(f"| {r['task']} | {r['run']} | {s['unet_copy_s']} | {s['warmup_s']} | {s['capture_s']} |")
    if "floors" in result:
        lines += ["", f"Floors: `{json.dumps(result['floors'])}`"]
    for label, report in result.get("profile", {}).items():
        lines += [
            "",
            f"Profile, {label} ({report['steps']} steps, sum of kernel time {report['gpu_time_ms_sum_of_kernels']} ms):",
            "",
            "| kernel | calls | self GPU ms | share |",
            "| --- | ---: | ---: | ---: |",
        ]
        lines += [f"| `{e['name']}` | {e['calls']} | {e['self_gpu_ms']} | {e['share']} |" for e in report["top"]]
        if "by_kind_ms" in report:
            per_step = {kind: round(ms / report["steps"], 3) for kind, ms in report["by_kind_ms"].items()}
            lines += ["", f"Kernel time per step by family (ms): `{json.dumps(per_step)}`"]
        if "top_aten_ops" in report:
            lines += ["", "The same kernels charged to the aten ops that launched them:", ""]
            lines += ["| aten op | calls | self GPU ms | share |", "| --- | ---: | ---: | ---: |"]
            lines += [
                f"| `{e['name']}` | {e['calls']} | {e['self_gpu_ms']} | {e['share']} |" for e in report["top_aten_ops"]
            ]
    lines.append("")
    stem.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
