"""Crash-safe training checkpoints: `<output_dir>/checkpoint-<step>/`, written whole or not at all.

A checkpoint is written to `checkpoint-<step>.tmp` and renamed to `checkpoint-<step>` only when every process has
finished writing, so a run killed at any moment (even with kill -9) leaves only complete `checkpoint-<int>` folders,
plus perhaps a `checkpoint-<step>.tmp` or a retired `.checkpoint-<step>.old` one that `latest` never picks and the
next save removes. Old checkpoints are pruned after the new one exists, never before (with a limit of 1, pruning first
would leave no checkpoint at all if the save died), and each is renamed to its `retired_path` before it is deleted, so
a kill in the middle of a deletion never leaves a half-deleted `checkpoint-<int>` that still looks complete. Moving
into place and retiring are the pipeline's `replace_path`/`retired_path`: one folder swap for pipelines and
checkpoints. A save that fails (a full disk) removes what it wrote and
raises an OSError naming the checkpoint, the free space and the fix; the checkpoints already saved are untouched.
No fsync: this protects against the process dying, not against the machine losing power.
"""

from __future__ import annotations

import json
import os
import re
import shutil

from accelerate import Accelerator

from hfdiff.pipelines.pipeline_sprite_diffusion import replace_path, retired_path

STATE_FILE = "training_state.json"  # written last, inside the .tmp folder: {"global_step": ..., ...}
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# What a killed or failed save leaves: a half-written checkpoint-N.tmp, a retired .checkpoint-N.old (and the
# checkpoint-N.old that versions before retired_path left).
_STALE = re.compile(r"^(checkpoint-\d+\.(tmp|old)|\.checkpoint-\d+\.old)$")
_FEWER = " (a lower --checkpoints_total_limit keeps fewer checkpoints)"


def list_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """Complete checkpoints in `output_dir` as (step, path), oldest first."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        match = _CHECKPOINT.match(name)
        path = os.path.join(output_dir, name)
        if match and os.path.isfile(os.path.join(path, STATE_FILE)):
            found.append((int(match.group(1)), path))
    return sorted(found)


def find_checkpoint(output_dir: str, resume_from_checkpoint: str) -> str | None:
    """--resume_from_checkpoint -> a checkpoint folder: 'latest' gives the newest complete one in `output_dir` (None
    when there is none, so that a restarted job can always pass 'latest'); anything else is a path that must exist."""
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1][1] if checkpoints else None
    path = resume_from_checkpoint
    if not os.path.isdir(path) and os.path.isdir(os.path.join(output_dir, path)):
        path = os.path.join(output_dir, path)  # a bare "checkpoint-500" means the one in --output_dir
    if not os.path.isfile(os.path.join(path, STATE_FILE)):
        raise FileNotFoundError(
            f"--resume_from_checkpoint {resume_from_checkpoint}: no complete checkpoint there (expected a folder with "
            f"{STATE_FILE}, such as {os.path.join(output_dir, 'checkpoint-500')}); pass 'latest' or a checkpoint folder."
        )
    return path


def read_training_state(path: str) -> dict:
    with open(os.path.join(path, STATE_FILE), encoding="utf-8") as f:
        return json.load(f)


def save_checkpoint(accelerator: Accelerator, output_dir: str, state: dict, total_limit: int | None) -> str:
    """Every process calls this: `accelerator.save_state` (model, optimizer, LR schedule, EMA, RNG states) into a
    .tmp folder, then the main process adds `state` as JSON, renames the folder into place and prunes old ones.

    A write that fails on any process fails the save on every process, with the same error: the processes meet at
    collectives that carry each one's outcome, where a plain barrier would leave the others waiting forever for the
    one that raised."""
    step = state["global_step"]
    final = os.path.join(output_dir, f"checkpoint-{step}")
    tmp = final + ".tmp"
    if accelerator.is_main_process:
        _remove_stale_temporaries(output_dir)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(tmp)
        error = None
    except Exception as caught:  # OSError, torch's RuntimeError or safetensors' error for the same full disk
        error = caught
    _raise_if_any_failed(accelerator, error, tmp, f"checkpoint {final}", output_dir)
    error = None
    if accelerator.is_main_process:
        try:
            with open(os.path.join(tmp, STATE_FILE), "w", encoding="utf-8") as f:
                json.dump(state, f, indent=2)
        except OSError as caught:
            error = caught
        else:
            replace_path(tmp, final)
            prune_checkpoints(output_dir, total_limit)
    _raise_if_any_failed(accelerator, error, tmp, f"checkpoint {final}", output_dir)
    return final


def _raise_if_any_failed(accelerator: Accelerator, error: BaseException | None, tmp: str, what: str, output_dir):
    """All processes: share each one's error (None for success); if any failed, remove the partial folder and raise
    the first failure's error everywhere. With one process, just that."""
    from accelerate.utils import gather_object

    outcome = None if error is None else f"{type(error).__name__}: {error}"
    if accelerator.num_processes > 1:
        outcomes = gather_object([outcome])  # also the barrier: every process has finished writing
        failures = [(rank, text) for rank, text in enumerate(outcomes) if text is not None]
    else:
        failures = [] if outcome is None else [(0, outcome)]
    if not failures:
        return
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # give the space back; the older checkpoints were never touched
    rank, text = failures[0]
    cause = error if error is not None else RuntimeError(f"process {rank}: {text}")
    raise save_error(what, output_dir, cause, _FEWER) from error


def save_error(what: str, output_dir: str, error: BaseException, hint: str = "") -> OSError:
    """The error for a save that failed while writing, usually a full disk: what was being saved, where, the space
    left there, and the fix. Writing raises many types for the same cause (OSError, torch's RuntimeError "file write
    failed", safetensors' SafetensorError), so the original error is quoted rather than relied on."""
    folder = os.path.abspath(output_dir)
    try:
        free = f"{shutil.disk_usage(folder).free / 2**20:,.0f} MiB free there"
    except OSError:
        free = "free space unknown"
    return OSError(
        f"Could not write the {what} ({type(error).__name__}: {error}); {free}. A full disk (or a file size limit) "
        f"is the usual cause: free space on the disk of {folder}, or pass another --output_dir{hint}. What was "
        "saved before is unchanged; continue with --resume_from_checkpoint latest."
    )


def prune_checkpoints(output_dir: str, total_limit: int | None) -> None:
    """Delete the oldest complete checkpoints beyond `total_limit`: each is renamed to its `retired_path` first
    (atomic), so that a deletion cut short leaves a `.checkpoint-N.old` folder for the next save to remove, not a
    half-deleted checkpoint."""
    if total_limit is None:
        return
    checkpoints = list_checkpoints(output_dir)
    for _, path in checkpoints[: max(0, len(checkpoints) - total_limit)]:
        retired = retired_path(path)
        shutil.rmtree(retired, ignore_errors=True)
        os.replace(path, retired)
        shutil.rmtree(retired)


def _remove_stale_temporaries(output_dir: str) -> None:
    """Half-written (.tmp) and half-deleted (.old) checkpoints of a killed or failed run."""
    if not os.path.isdir(output_dir):
        return
    for name in os.listdir(output_dir):
        if _STALE.match(name):
            shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)
