"""Crash safety: train_conditional.py killed with SIGKILL at random moments (during training, while a checkpoint is
being written, during the final pipeline save) and runs whose disk fills up (a per-process file size limit) leave
only complete checkpoints and either the previous complete pipeline or none; `--resume_from_checkpoint latest`
then finishes the run.

Each run is a real training process running the script: a child forked from a multiprocessing fork server that has
imported torch, diffusers and hfdiff once, so a run starts in a fraction of a second instead of ~8 s and the many
runs here fit in about half a minute. Kill moments come from a seeded generator: the same moments every time.
"""

import json
import multiprocessing
import os
import random
import re
import resource
import runpy
import signal
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny import TINY_UNET_JSON

from hfdiff import SpriteDiffusionPipeline
from hfdiff.training.checkpoint_state import read_state
from hfdiff.training.checkpoints import find_checkpoint, list_checkpoints

ROOT = Path(__file__).resolve().parents[1]
# ~50 ms a step and ~40 ms a checkpoint on one CPU thread: 64 sprites, batches of 8, a 20-step noise schedule.
TINY_RUN = [
    "--model_config_overrides", TINY_UNET_JSON,
    "--num_train_images", "64",
    "--train_batch_size", "8",
    "--ddpm_num_steps", "20",
    "--validation_inference_steps", "2",
    "--num_validation_images", "1",
    "--validation_steps", "1000",
    "--logging_steps", "1000",
    "--lr_warmup_steps", "2",
    "--mixed_precision", "no",
    "--num_cpu_threads", "1",
]  # fmt: skip
CHECKPOINT_FILES = {
    "model.safetensors",
    "optimizer.safetensors",
    "scheduler.safetensors",
    "ema.safetensors",
    "random_states_0.safetensors",
    "training_state.json",
}
UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"
FILE_SIZE_LIMIT = 120_000  # bytes: logs, grids and JSON fit; the tiny UNet's weights (~180 kB) do not


def _run_script(argv: list[str], log: str, file_size_limit: int | None, kill_at_move: int | None) -> None:
    """The child process: output to `log`, then train_conditional.py exactly as `python train_conditional.py argv`.

    file_size_limit: a full disk (writes past the limit fail with EFBIG instead of killing the process).
    kill_at_move: the process kill -9s itself just before the n-th rename into (or deletion in) --output_dir of
    anything that is not a checkpoint (nor a retired `.checkpoint-N.old` one), i.e. at a chosen point of the final
    save, where an outside kill would be a race."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    if file_size_limit is not None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, resource.RLIM_INFINITY))
    if kill_at_move is not None:
        output_dir, moves = Path(argv[argv.index("--output_dir") + 1]), []

        def or_die(operation):
            def operation_or_die(*paths, **kwargs):
                target = Path(paths[-1])
                if target.parent == output_dir and not target.name.lstrip(".").startswith("checkpoint-"):
                    moves.append(target)
                    if len(moves) == kill_at_move:
                        os.kill(os.getpid(), signal.SIGKILL)
                return operation(*paths, **kwargs)

            return operation_or_die

        os.replace, os.unlink = or_die(os.replace), or_die(os.unlink)
    sys.argv = ["train_conditional.py", *argv]
    runpy.run_path(str(ROOT / "train_conditional.py"), run_name="__main__")


@pytest.fixture(scope="module")
def launch():
    """start(output_dir, *flags, file_size_limit=None, kill_at_move=None) -> a started training process (a
    multiprocessing.Process running train_conditional.py)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(
        ["hfdiff", "hfdiff.hub", "hfdiff.training.loop", "torch.utils.tensorboard", "test_crash_safety"]
    )
    with pytest.MonkeyPatch.context() as env:  # the fork server, started now, passes these on to every run
        env.setenv("OMP_NUM_THREADS", "1")
        env.setenv("HF_HUB_OFFLINE", "1")
        from multiprocessing import forkserver

        forkserver.ensure_running()
    runs = []

    def start(output_dir: Path, *flags: str, file_size_limit: int | None = None, kill_at_move: int | None = None):
        log = str(output_dir.parent / f"run-{len(runs)}.log")
        argv = [*TINY_RUN, "--output_dir", str(output_dir), *flags]
        process = context.Process(target=_run_script, args=(argv, log, file_size_limit, kill_at_move))
        process.log = log
        process.start()
        runs.append(process)
        return process

    yield start
    for process in runs:
        if process.is_alive():
            process.kill()
        process.join()


def finish(process, timeout: float = 120.0) -> str:
    """Wait for a run that should succeed; returns its log."""
    process.join(timeout)
    log = Path(process.log).read_text()
    assert process.exitcode == 0, log[-5000:]
    return log


def fail(process, timeout: float = 120.0) -> str:
    """Wait for a run that should stop with an error; returns its log."""
    process.join(timeout)
    log = Path(process.log).read_text()
    assert process.exitcode == 1, log[-5000:]
    return log


def last_error(log: str) -> str:
    """The one-line error that ends a run's log (tqdm may still print after it), without the script's name; a run
    that ends in a traceback fails the test."""
    assert "Traceback" not in log, log[-5000:]
    return re.findall(r"train_conditional\.py: error: (.*)$", log, flags=re.MULTILINE)[-1]


def kill_when(process, condition, delay: float = 0.0, timeout: float = 60.0) -> None:
    """SIGKILL the run `delay` seconds after condition() first holds (polled every 0.2 ms)."""
    deadline = time.monotonic() + timeout
    while not condition() and process.is_alive():
        assert time.monotonic() < deadline, "the awaited moment never came"
        time.sleep(0.0002)
    if delay:
        process.join(delay)
    process.kill()  # kill -9
    process.join()
    assert process.exitcode == -signal.SIGKILL, (
        "the run ended before the kill:\n" + Path(process.log).read_text()[-3000:]
    )


def entries(folder: Path, pattern: str) -> list[str]:
    try:
        return [name for name in os.listdir(folder) if re.fullmatch(pattern, name)]
    except FileNotFoundError:
        return []


def step_of(name: str) -> int:
    return int(re.match(r"checkpoint-(\d+)", name).group(1))


def assert_checkpoints_complete(output_dir: Path) -> int:
    """Every checkpoint-<int> folder is complete (each of its files loads) and `latest` picks the newest; returns its
    step (0 when there is none)."""
    folders = sorted(entries(output_dir, r"checkpoint-\d+"), key=step_of)
    assert [Path(path).name for _, path in list_checkpoints(str(output_dir))] == folders
    for name in folders:
        path = output_dir / name
        assert set(os.listdir(path)) == CHECKPOINT_FILES, (name, sorted(os.listdir(path)))
        assert json.loads((path / "training_state.json").read_text())["global_step"] == step_of(name)
        assert load_file(path / "model.safetensors")
        for file in ("optimizer", "scheduler", "ema", "random_states_0"):
            read_state(str(path / f"{file}.safetensors"))
    assert find_checkpoint(str(output_dir), "latest") == (str(output_dir / folders[-1]) if folders else None)
    return step_of(folders[-1]) if folders else 0


def pipeline_weights(output_dir: Path) -> dict:
    """Load the pipeline in `output_dir`, sample from it, and return its UNet weights."""
    pipe = SpriteDiffusionPipeline.from_pretrained(output_dir)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=1, class_labels="hero", num_inference_steps=2, output_type="np").images
    assert images.shape == (1, 16, 16, 3)
    return load_file(output_dir / UNET_WEIGHTS)


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def leftovers(output_dir: Path) -> list[str]:
    """Temporary files and folders of saves: checkpoint-N.tmp folders, retired `.<name>.old` checkpoints and
    pipeline components (and the checkpoint-N.old of earlier versions), the pipeline's staging folder, the staged
    samples.png."""
    return entries(output_dir, r"checkpoint-.*\.(tmp|old)|\..*\.old|\.samples\.png\.tmp|\.saving-.*") + entries(
        output_dir.parent, re.escape(f".{output_dir.name}.saving-") + ".*"
    )


def test_kill_9_during_training_leaves_only_complete_checkpoints(tmp_path, launch):
    rng = random.Random(0)
    out = tmp_path / "run"
    flags = ["--max_train_steps", "60", "--checkpointing_steps", "1", "--checkpoints_total_limit", "2"]
    resume = [*flags, "--resume_from_checkpoint", "latest"]

    # 1. a fresh run, killed at a random moment after its first checkpoint
    kill_when(launch(out, *flags), lambda: list_checkpoints(str(out)), delay=rng.uniform(0.0, 0.3))
    assert assert_checkpoints_complete(out) > 0

    # 2. resumed, and killed the moment a checkpoint starts being written (its .tmp folder appears), twice; the
    #    first save of a resumed run may find the .tmp folder the last kill left, so wait for a later step's one
    for _ in range(2):
        latest = assert_checkpoints_complete(out)

        def writing_a_checkpoint():
            return [name for name in entries(out, r"checkpoint-\d+\.tmp") if step_of(name) > latest + 1]

        kill_when(launch(out, *resume), writing_a_checkpoint)
        assert writing_a_checkpoint(), "the kill came after the checkpoint was complete"
        assert assert_checkpoints_complete(out) >= latest

    # 3. resumed, and killed at random moments: start-up, loading the checkpoint, training, saving, pruning
    for _ in range(3):
        latest = assert_checkpoints_complete(out)
        run = launch(out, *resume)
        kill_when(run, lambda: True, delay=rng.uniform(0.1, 1.2))
        assert assert_checkpoints_complete(out) >= latest

    # 4. resumed to the end: every step is done once more and the pipeline is saved
    log = finish(launch(out, *resume))
    assert re.search(r"Resumed from .*checkpoint-\d+ at step \d+", log)
    assert assert_checkpoints_complete(out) == 60
    pipeline_weights(out)
    assert not leftovers(out)


def test_kill_9_during_the_final_save_leaves_the_previous_pipeline_or_none(tmp_path, launch):
    out = tmp_path / "run"
    finish(launch(out, "--max_train_steps", "2", "--checkpointing_steps", "2"))
    previous = pipeline_weights(out), (out / "README.md").read_text()  # the model card names max_train_steps 2
    # Every run below resumes from checkpoint-2 and trains the same two steps: the same new pipeline each time.
    more = ["--max_train_steps", "4", "--checkpointing_steps", "0", "--resume_from_checkpoint", "latest"]

    def state_after_kill():
        """(weights, model card) of the pipeline in `out`, or None when there is none; a partial one fails here."""
        if not (out / "model_index.json").exists():
            with pytest.raises(FileNotFoundError, match="cut short"):
                SpriteDiffusionPipeline.from_pretrained(out)
            return None
        return pipeline_weights(out), (out / "README.md").read_text()

    def writing_the_pipeline():
        # the staging folder: beside the target (.run.saving-*) or, where a rename must not cross filesystems,
        # inside it (.saving-*)
        staged = [tmp_path / name for name in entries(tmp_path, r"\.run\.saving-.*")]
        staged += [out / name for name in entries(out, r"\.saving-.*")]
        return [path for path in staged if (path / "unet").exists()]

    # killed from outside while the new pipeline is being written beside the folder
    kill_when(launch(out, *more), writing_the_pipeline)
    found = [state_after_kill()]
    # killed just before each deletion or rename in the folder: the old index, then the model card, code,
    # components, the new index and samples.png moving in
    for move in range(1, 40):  # more than the save has: old files are kept aside and removed once it is through
        run = launch(out, *more, kill_at_move=move)
        run.join(60)
        if run.exitcode == 0:  # fewer renames than `move`: the save went through
            break
        assert run.exitcode == -signal.SIGKILL, Path(run.log).read_text()[-3000:]
        found.append(state_after_kill())
        assert assert_checkpoints_complete(out) == 2
    assert move > 5
    new = pipeline_weights(out), (out / "README.md").read_text()
    assert not same_weights(new[0], previous[0]) and new[1] != previous[1]
    for state in found:  # nothing, the previous pipeline or the new one, whole: weights and model card together
        assert state is None or any(same_weights(state[0], w) and state[1] == card for w, card in (previous, new))
    assert None in found and any(state is not None and state[1] == previous[1] for state in found)
    assert not leftovers(out)


def test_disk_full_during_a_checkpoint_and_the_final_save(tmp_path, launch):
    out = tmp_path / "run"
    finish(launch(out, "--max_train_steps", "2", "--checkpointing_steps", "2"))
    previous, samples = pipeline_weights(out), (out / "samples.png").read_bytes()
    resume = ["--max_train_steps", "4", "--resume_from_checkpoint", "latest"]

    # a checkpoint that does not fit: the run stops with an error naming it, the space and the fix
    log = fail(launch(out, *resume, "--checkpointing_steps", "1", file_size_limit=FILE_SIZE_LIMIT))
    error = last_error(log)
    assert error.startswith(f"Could not write the checkpoint {out / 'checkpoint-3'}"), error
    assert "File too large" in error and "MiB free" in error and "--output_dir" in error
    assert assert_checkpoints_complete(out) == 2 and not leftovers(out)
    assert same_weights(pipeline_weights(out), previous)

    # the final pipeline that does not fit: the previous pipeline and samples.png stay as they were
    log = fail(launch(out, *resume, "--checkpointing_steps", "0", file_size_limit=FILE_SIZE_LIMIT))
    error = last_error(log)
    assert error.startswith(f"Could not write the final pipeline in {out}"), error
    assert "File too large" in error and "--output_dir" in error
    assert same_weights(pipeline_weights(out), previous) and (out / "samples.png").read_bytes() == samples
    assert assert_checkpoints_complete(out) == 2 and not leftovers(out)

    # with room again, the same command finishes the run
    finish(launch(out, *resume, "--checkpointing_steps", "0"))
    assert not same_weights(pipeline_weights(out), previous)
