"""Training throughput (images/s) of hfdiff's loop beside reference loops written here, all in one run.

    python benchmarks/bench_training.py                  # GPU: 89,400 sprites, batch 1,024, 300 steps per row
    python benchmarks/bench_training.py --quick          # CPU: 4,000 sprites, batch 64, 40 steps per row
    python benchmarks/bench_training.py --profile        # also: the GPU kernels of one eager hfdiff step, by time

References (plain PyTorch and diffusers, nothing imported from hfdiff):
- course loop: the course notebook's recipe: its UNet (residual conv blocks, 64 features, time and context embeddings
  multiplied/added in the decoder), linear betas 1e-4..0.02 over 500 steps, a DataLoader of float images on the host
  copied to the device every batch, fp32, Adam, batch 100, loss.item() every step;
- diffusers loop: train_unconditional's recipe: a UNet2DModel shaped as sprite-small, DDPMScheduler.add_noise,
  AdamW, gradient clipping, EMAModel, a DataLoader over the host images; fp32 and bf16 autocast;
- tuned loop: the same UNet2DModel with everything a careful PyTorch user would do: the data on the device, bf16,
  channels_last, torch.compile, fused AdamW, no host sync in the loop (GPU only).
hfdiff rows run `hfdiff.training.train` as the scripts do (conditional, EMA, gradient clipping, cosine LR schedule),
eager or with the step replayed from a CUDA graph (the GPU default), with and without torch.compile. Each "text" row
is the row above it with --conditioning text (captions embedded once by all-MiniLM-L6-v2, 384-d contexts gathered
by index in the same step; needs `pip install "hfdiff[text]"`): the target is >= 90% of the class row's images/s,
printed as "text/class". The text encoder's start-up (embedding the distinct captions) is outside the step's timing.

images/s leaves out the first fifth of each row's steps (warm-up, compile, graph capture); the one-off setup of the
hfdiff step (warm-up steps, compile, capture) is reported on its own. "final loss" is the mean training loss of the
last fifth: rows that train the same model on the same data (the hfdiff rows) can be compared by it. Results go to
benchmarks/results/training-<device>.{json,md}, with the command line.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import diffusers
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

RESULTS = Path(__file__).parent / "results"


# ----------------------------------------------------------------------------------------------------------------
# the course's model, written out
# ----------------------------------------------------------------------------------------------------------------


class ConvBlock(nn.Module):
    """Two 3x3 conv + BatchNorm + GELU layers; with `residual`, the input (or its 1x1 projection) is added back and
    the sum scaled by 1/sqrt(2)."""

    def __init__(self, in_ch: int, out_ch: int, residual: bool = False):
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 3, 1, 1), nn.BatchNorm2d(out_ch), nn.GELU(),
            nn.Conv2d(out_ch, out_ch, 3, 1, 1), nn.BatchNorm2d(out_ch), nn.GELU(),
        )  # fmt: skip
        self.project = nn.Conv2d(in_ch, out_ch, 1) if residual and in_ch != out_ch else nn.Identity()

    def forward(self, x):
        out = self.layers(x)
        return (self.project(x) + out) / 1.414 if self.residual else out


class Embed(nn.Module):
    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.in_dim, self.dim = in_dim, dim
        self.mlp = nn.Sequential(nn.Linear(in_dim, dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, x):
        return self.mlp(x.view(-1, self.in_dim)).view(-1, self.dim, 1, 1)


class CourseUNet(nn.Module):
    """The course's context UNet for 16x16 sprites: two downsamplings to 4x4, a pooled 1x1 bottleneck, and a decoder
    whose two up-blocks take `c_emb * h + t_emb` with h the previous decoder output."""

    def __init__(self, channels: int = 3, features: int = 64, context_dim: int = 5, size: int = 16):
        super().__init__()
        f = features
        self.context_dim = context_dim
        self.init_conv = ConvBlock(channels, f, residual=True)
        self.down1 = nn.Sequential(ConvBlock(f, f), ConvBlock(f, f), nn.MaxPool2d(2))
        self.down2 = nn.Sequential(ConvBlock(f, 2 * f), ConvBlock(2 * f, 2 * f), nn.MaxPool2d(2))
        self.to_vec = nn.Sequential(nn.AvgPool2d(size // 4), nn.GELU())
        self.time1, self.time2 = Embed(1, 2 * f), Embed(1, f)
        self.context1, self.context2 = Embed(context_dim, 2 * f), Embed(context_dim, f)
        self.up0 = nn.Sequential(
            nn.ConvTranspose2d(2 * f, 2 * f, size // 4, size // 4), nn.GroupNorm(8, 2 * f), nn.ReLU()
        )
        self.up1 = nn.ModuleList([nn.ConvTranspose2d(4 * f, f, 2, 2), ConvBlock(f, f), ConvBlock(f, f)])
        self.up2 = nn.ModuleList([nn.ConvTranspose2d(2 * f, f, 2, 2), ConvBlock(f, f), ConvBlock(f, f)])
        self.out = nn.Sequential(
            nn.Conv2d(2 * f, f, 3, 1, 1), nn.GroupNorm(8, f), nn.ReLU(), nn.Conv2d(f, channels, 3, 1, 1)
        )

    @staticmethod
    def _up(blocks, h, skip):
        return blocks[2](blocks[1](blocks[0](torch.cat([h, skip], dim=1))))

    def forward(self, x, t, c):
        """x (B, C, H, W), t (B,) in [0, 1] (step / T), c (B, context_dim)."""
        x = self.init_conv(x)
        down1 = self.down1(x)
        down2 = self.down2(down1)
        h = self.up0(self.to_vec(down2))
        h = self._up(self.up1, self.context1(c) * h + self.time1(t), down2)
        h = self._up(self.up2, self.context2(c) * h + self.time2(t), down1)
        return self.out(torch.cat([h, x], dim=1))


def sprite_tensors(num_images: int):
    """(N, 3, 16, 16) uint8 sprites and (N,) int64 labels: the same procedural set every row trains on."""
    from hfdiff.data import generate_sprites  # the data only; every reference's model and loop is written here

    images, labels = generate_sprites(num_images, seed=0)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels).long()


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def course_loop(args, device) -> dict:
    images, labels = sprite_tensors(args.num_train_images)
    x = images.float() / 127.5 - 1  # float images on the host, as the course's dataset returns them
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, labels), batch_size=args.course_batch_size, shuffle=True, drop_last=True
    )
    torch.manual_seed(0)
    model = CourseUNet().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    betas = torch.linspace(1e-4, 0.02, 501, device=device)  # the course's schedule, T = 500
    abar = torch.cumsum(torch.log(1 - betas), dim=0).exp()
    return timed_loop(args, device, args.course_batch_size, loader, model, optimizer, abar, course=True)


def diffusers_unet(device):
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=16,
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64, 80),
        down_block_types=("DownBlock2D",) * 3,
        up_block_types=("UpBlock2D",) * 3,
        layers_per_block=1,
        add_attention=False,
        norm_num_groups=8,
    ).to(device)


def diffusers_loop(args, device, bf16: bool) -> dict:
    from diffusers.training_utils import EMAModel

    images, _ = sprite_tensors(args.num_train_images)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(images),
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        pin_memory=device.type == "cuda",
    )
    model = diffusers_unet(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ema = EMAModel(model.parameters(), decay=0.9999, use_ema_warmup=True, power=0.75, foreach=True)
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=500)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    return timed_loop(args, device, args.batch_size, loader, model, optimizer, scheduler, ema=ema, autocast=autocast)


def timed_loop(args, device, batch_size, loader, model, optimizer, schedule, course=False, ema=None, autocast=None):
    """The loop both DataLoader references share: host batch -> device, noise, loss, step (and EMA)."""
    warmup, step, start, last_losses = args.steps // 5, 0, None, []
    while step < args.steps:
        for batch in loader:
            if step == warmup:
                synchronize(device)
                start = time.perf_counter()
            x0 = batch[0].to(device, non_blocking=True)
            if not course:
                x0 = x0.float() / 127.5 - 1
            noise = torch.randn_like(x0)
            t = torch.randint(0 if not course else 1, 500 if not course else 501, (x0.shape[0],), device=device)
            if course:
                c = (
                    F.one_hot(batch[1].to(device), 5).float()
                    * (torch.rand(x0.shape[0], device=device) >= 0.1)[:, None]
                )
                abar = schedule[t, None, None, None]
                noisy = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
                loss = F.mse_loss(model(noisy, t / 500.0, c), noise)
            else:
                with autocast:
                    prediction = model(schedule.add_noise(x0, noise, t), t).sample
                loss = F.mse_loss(prediction.float(), noise)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if not course:
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            if ema is not None:
                ema.step(model.parameters())
            value = loss.item()  # both recipes read the loss every step (to print or to log it)
            step += 1
            if step > args.steps - args.steps // 5:
                last_losses.append(value)
            if step == args.steps:
                break
    synchronize(device)
    seconds = time.perf_counter() - start
    return {
        "images_per_second": (args.steps - warmup) * batch_size / seconds,
        "final_loss": float(np.mean(last_losses)),
    }


def tuned_loop(args, device) -> dict:
    """The strongest plain-PyTorch loop: data on the device, bf16, channels_last, compile, fused AdamW, no sync."""
    images, _ = sprite_tensors(args.num_train_images)
    images = images.to(device)
    model = diffusers_unet(device).to(memory_format=torch.channels_last)
    compiled = torch.compile(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    abar = diffusers.DDPMScheduler(num_train_timesteps=500).alphas_cumprod.to(device)
    warmup, start, loss_sum = args.steps // 5, None, torch.zeros((), device=device)
    compile_start = time.perf_counter()
    for step in range(args.steps):
        if step == 1:
            synchronize(device)
            compile_seconds = time.perf_counter() - compile_start
        if step == warmup:
            synchronize(device)
            start = time.perf_counter()
        index = torch.randint(0, images.shape[0], (args.batch_size,), device=device)
        x0 = (images[index].float() / 127.5 - 1).contiguous(memory_format=torch.channels_last)
        noise = torch.randn_like(x0)
        t = torch.randint(0, 500, (args.batch_size,), device=device)
        a = abar[t, None, None, None]
        with torch.autocast(device.type, dtype=torch.bfloat16):
            prediction = compiled(a.sqrt() * x0 + (1 - a).sqrt() * noise, t).sample
        loss = F.mse_loss(prediction.float(), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step >= args.steps - args.steps // 5:
            loss_sum += loss.detach()
    synchronize(device)
    seconds = time.perf_counter() - start
    return {
        "images_per_second": (args.steps - warmup) * args.batch_size / seconds,
        "final_loss": loss_sum.item() / (args.steps // 5),
        "setup_seconds": compile_seconds,
    }


def hfdiff_loop(args, flags: list[str]) -> dict:
    from accelerate.state import AcceleratorState

    from hfdiff.training import parse_config, train

    with tempfile.TemporaryDirectory() as output_dir:
        config = parse_config(
            [
                "--output_dir", output_dir,
                "--num_train_images", str(args.num_train_images),
                "--train_batch_size", str(args.batch_size),
                "--max_train_steps", str(args.steps),
                "--logging_steps", str(max(1, args.steps // 5)),  # the meter skips the first interval
                "--checkpointing_steps", "0",
                "--validation_steps", str(10 * args.steps),
                "--num_validation_images", "1",
                *flags,
            ]
        )  # fmt: skip
        result = train(config, conditional=True)
    AcceleratorState._reset_state(reset_partial_state=True)  # the next row may use another mixed precision
    return {
        "images_per_second": result.images_per_second,
        "final_loss": result.final_loss,
        "setup_seconds": result.step_setup_seconds,
    }


def profile_eager_step(args, device, path: Path) -> str:
    """The GPU kernels of a few eager hfdiff training steps (bf16, the batch of the run), grouped by name."""
    from torch.profiler import ProfilerActivity, profile

    from hfdiff.models import ContextUNet2DModel

    torch.manual_seed(0)
    model = ContextUNet2DModel.from_preset("sprite-small").to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    x = torch.randn(args.batch_size, 3, 16, 16, device=device)
    t = torch.randint(0, 500, (args.batch_size,), device=device)
    c = torch.eye(5, device=device)[torch.randint(0, 5, (args.batch_size,), device=device)]

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.mse_loss(model(x, t, context=c).sample.float(), x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(5):
        step()
    synchronize(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            step()
        synchronize(device)
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25)
    path.write_text(table + "\n")
    return table


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a CPU-sized run: 4,000 sprites, batch 64, 40 steps")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per row (default 300; quick 40)")
    parser.add_argument("--batch_size", type=int, default=None, help="default 1,024 (the GPU default); quick 64")
    parser.add_argument("--course_batch_size", type=int, default=100, help="the course loop's batch (default 100)")
    parser.add_argument("--num_train_images", type=int, default=None, help="default 89,400; quick 4,000")
    parser.add_argument("--profile", action="store_true", help="also profile the GPU kernels of an eager step")
    parser.add_argument("--only", default=None, help="run only the rows whose name contains this text")
    args = parser.parse_args(argv)
    args.steps = args.steps or (40 if args.quick else 300)
    args.batch_size = args.batch_size or (64 if args.quick else 1024)
    args.num_train_images = args.num_train_images or (4_000 if args.quick else 89_400)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"

    rows = {
        f"course loop (DataLoader, fp32, batch {args.course_batch_size})": lambda: course_loop(args, device),
        "diffusers loop (DataLoader, fp32, EMA)": lambda: diffusers_loop(args, device, bf16=False),
        "diffusers loop (DataLoader, bf16, EMA)": lambda: diffusers_loop(args, device, bf16=True),
    }
    if cuda:  # compiling takes minutes on a CPU
        rows["tuned loop (data on GPU, bf16, channels_last, compile)"] = lambda: tuned_loop(args, device)
    eager = ["--no-cuda_graphs", "--no-compile", "--no-channels_last"]
    hfdiff_rows = {"hfdiff eager fp32": ["--mixed_precision", "no", *eager]}
    hfdiff_rows["hfdiff eager bf16"] = ["--mixed_precision", "bf16", *eager]
    if cuda:
        hfdiff_rows["hfdiff CUDA graph bf16"] = ["--no-compile", "--no-channels_last"]
        hfdiff_rows["hfdiff CUDA graph bf16 + compile"] = ["--no-channels_last"]
        hfdiff_rows["hfdiff default (CUDA graph, bf16, compile, channels_last)"] = []
    for name, flags in hfdiff_rows.items():  # each class row, then the same with text contexts
        rows[name] = lambda flags=flags: hfdiff_loop(args, flags)
        rows[f"{name} text"] = lambda flags=flags: hfdiff_loop(args, ["--conditioning", "text", *flags])
    if args.only:
        rows = {name: run for name, run in rows.items() if args.only in name}

    device_name = torch.cuda.get_device_name() if cuda else platform.processor() or "cpu"
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"training-{device.type}{'-quick' if args.quick else ''}"
    results = {}
    for name, run in rows.items():
        try:
            results[name] = run()
        except Exception as err:  # one failing row must not lose the others' numbers
            results[name] = {"error": f"{type(err).__name__}: {err}"[:500]}
        text_over_class(results, name)
        print(f"{name}: {results[name]}", flush=True)
        table = write_results(args, device_name, results, stem)  # after every row: a killed run keeps the rest
    print(table)
    if args.profile and cuda:
        print(profile_eager_step(args, device, stem.with_suffix(".profile.txt"))[:3000])


def text_over_class(results: dict, name: str) -> None:
    """A text row's images/s as a fraction of its class row's (the row of the same name without " text")."""
    if not name.endswith(" text"):
        return
    text, base = results[name], results.get(name[: -len(" text")], {})
    if text.get("images_per_second") and base.get("images_per_second"):
        text["text/class"] = round(text["images_per_second"] / base["images_per_second"], 3)


def write_results(args, device_name: str, results: dict, stem: Path) -> str:
    record = {
        "command": "python " + " ".join(["benchmarks/bench_training.py", *sys.argv[1:]]),
        "device": device_name,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "num_train_images": args.num_train_images,
        "results": results,
    }
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        f"# Training throughput on {device_name}",
        "",
        f"`{record['command']}` (torch {torch.__version__}, diffusers {diffusers.__version__}, "
        f"{args.num_train_images:,} sprites, batch {args.batch_size} unless named, {args.steps} steps per row)",
        "",
        "| loop | images/s | vs course loop | vs diffusers bf16 | text/class | final loss | setup s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    speeds = {name: value.get("images_per_second") for name, value in results.items()}
    course = next((v for k, v in speeds.items() if k.startswith("course")), None)
    reference = next((v for k, v in speeds.items() if "diffusers loop" in k and "bf16" in k), None)
    for name, value in results.items():
        if "error" in value:
            lines.append(f"| {name} | failed: {value['error'][:120]} | | | | | |")
            continue
        speed = value["images_per_second"]
        ratio = [f"{speed / ref:.2f}x" if ref else "" for ref in (course, reference)]
        setup = f"{value['setup_seconds']:.1f}" if value.get("setup_seconds") else ""
        text = f"{value['text/class']:.0%}" if "text/class" in value else ""
        lines.append(
            f"| {name} | {speed:,.0f} | {ratio[0]} | {ratio[1]} | {text} | {value['final_loss']:.4f} | {setup} |"
        )
    table = "\n".join(lines) + "\n"
    stem.with_suffix(".md").write_text(table)
    return table


if __name__ == "__main__":
    main()
