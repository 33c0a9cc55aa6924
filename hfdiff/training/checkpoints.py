"""Crash-safe training checkpoints: `<output_dir>/checkpoint-<step>/`, written whole or not at all.

A checkpoint is written to `checkpoint-<step>.tmp` and renamed to `checkpoint-<step>` only when every process has
finished writing, so a run killed at any moment (even with kill -9) leaves only complete `checkpoint-<int>` folders,
plus perhaps a `checkpoint-<step>.tmp` or a retired `.checkpoint-<step>.old` one that `latest` never picks and the
next save removes. Old checkpoints are pruned after the new one exists, never before (with a limit of 1, pruning first
would leave no checkpoint at all if the save died), and each is renamed to its `retired_path` before it is deleted, so
a kill in the middle of a deletion never leaves a half-deleted `checkpoint-<int>` that still looks complete. Moving
into place and retiring are `hfdiff.folder_swap`'s `replace_path`/`retired_path`: one folder swap for pipelines and
checkpoints. A save that fails (a full disk) removes what it wrote and raises an OSError naming the checkpoint, the
free space and the fix; the checkpoints already saved are untouched. No fsync: this protects against the process
dying, not against the machine losing power.

What a checkpoint holds is data only (checkpoint_state.py: safetensors and JSON). Its training_state.json records the
run's identity (`run_identity`: the config entries that define the run and a fingerprint of the data), so that one
--output_dir never mixes two runs: a run that finds another run's checkpoints there is refused before it trains
(`check_checkpoints_belong_to_run`), and pruning deletes only checkpoints of the run that is saving.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil

from accelerate import Accelerator
from accelerate.logging import get_logger

from hfdiff.folder_swap import replace_path, retired_path

from .checkpoint_state import TrainingState, refuse_pickles

logger = get_logger(__name__)

STATE_FILE = "training_state.json"  # written last, inside the .tmp folder: {"global_step": ..., ...}
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# What a killed or failed save leaves: a half-written checkpoint-N.tmp, a retired .checkpoint-N.old.
_STALE = re.compile(r"^(checkpoint-\d+\.tmp|\.checkpoint-\d+\.old)$")
_FEWER = " (a lower --checkpoints_total_limit keeps fewer checkpoints)"
# Another run's checkpoints, moved aside by --overwrite_output_dir: deleted once the run that moved them has saved a
# checkpoint or its final pipeline (`remove_set_aside`), moved back by that other run's --resume_from_checkpoint
# latest before then (`restore_set_aside`).
_OVERWRITTEN = re.compile(r"^\.checkpoint-\d+\.overwritten$")
# The config entries that define a run: what the model is, what it learns from, and its seed. Everything else may
# change on a resume (length, cadence of checkpoints and validation, logging, speed flags, --output_dir). The data's
# paths are left out on purpose: the data fingerprint checks their content, and a moved folder is the same run.
IDENTITY_ENTRIES = (
    "preset", "model_config_overrides", "context_mlp_dim", "context_time_embedding", "prediction_type",
    "ddpm_num_steps", "ddpm_beta_schedule", "rescale_betas_zero_snr", "snr_gamma", "conditioning",
    "text_encoder_name_or_path", "holdout", "dataset_name", "dataset_config_name", "image_column", "label_column",
    "caption_column", "resolution", "num_train_images", "use_ema", "seed", "caption_noise", "caption_mixup",
)  # fmt: skip


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


# The entries of a checkpoint's STATE_FILE that resuming reads, and their types (the others are compared as saved).
_STATE_TYPES = {
    "global_step": int,
    "epoch": int,
    "world_size": int,
    "train_batch_size": int,
    "gradient_accumulation_steps": int,
    "seed": int,
    "shuffle_buffer_size": int,
    "conditioning": str,
    "run": dict,
}


def read_training_state(path: str) -> dict:
    """A checkpoint's STATE_FILE, checked: a JSON object whose entries have the types hfdiff writes (a hand-edited or
    damaged file is a ValueError naming the entry and the fix, not a TypeError part-way through the resume)."""
    file = os.path.join(path, STATE_FILE)
    fix = "The file was edited or damaged: restore it, or resume from another checkpoint (or delete this one)."
    try:
        with open(file, encoding="utf-8") as f:
            state = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{file} is not valid JSON ({error}). {fix}") from None
    if not isinstance(state, dict) or "global_step" not in state:
        raise ValueError(f"{file} is not a training state (a JSON object with a global_step). {fix}")
    for key, expected in _STATE_TYPES.items():
        value = state.get(key)
        wrong_type = not isinstance(value, expected) or (expected is int and isinstance(value, bool))
        if key in state and (wrong_type or (expected is int and value < 0)):
            kind = "a whole number >= 0" if expected is int else f"a JSON {'object' if expected is dict else 'string'}"
            raise ValueError(f"{file}: {key} is {value!r}, expected {kind}. {fix}")
    return state


def save_checkpoint(
    accelerator: Accelerator, output_dir: str, state: dict, total_limit: int | None, training: TrainingState
) -> str:
    """Every process calls this: `training.save` (model, optimizer, LR schedule, EMA, RNG states) into a .tmp folder,
    then the main process adds `state` as JSON, renames the folder into place and prunes old ones of the same run
    (`state["run"]`).

    A write that fails on any process fails the save on every process, with the same error: the processes meet at
    collectives that carry each one's outcome, where a plain barrier would leave the others waiting forever for the
    one that raised."""
    step = state["global_step"]
    final = os.path.join(output_dir, f"checkpoint-{step}")
    tmp = final + ".tmp"
    if accelerator.is_main_process:
        _remove_stale_temporaries(output_dir)
    clash = accelerator.is_main_process and os.path.lexists(tmp)  # left by the cleanup: not hfdiff's
    if accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        clash = any(gather_object([clash]))  # also the barrier: the cleanup is done
    else:
        accelerator.wait_for_everyone()
    if clash:  # never written into, nor removed
        error = FileExistsError(f"{tmp} exists and is not a checkpoint's temporary")
        raise save_error(f"checkpoint {final}", output_dir, error, f"; move {tmp} away")
    try:
        training.save(tmp, accelerator.is_main_process, accelerator.process_index)
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
            prune_checkpoints(output_dir, total_limit, state.get("run"))
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


class SaveFailedError(OSError):
    """A save that failed while writing (a checkpoint, a validation grid, the final pipeline), with a message that
    names what, where, the cause and the fix: the training scripts print it as one line, without the tracebacks of
    the writing error it was raised from."""


def save_error(what: str, output_dir: str, error: BaseException, hint: str = "") -> OSError:
    """The error for a save that failed while writing: what was being saved, where, the cause named from the error
    (`save_failure_cause`: a full disk or file size limit, a cross-filesystem rename, permissions, a read-only
    filesystem; anything else is quoted, not guessed at), and the fix. Keeps the errno."""
    from hfdiff.folder_swap import save_failure_cause

    folder = os.path.abspath(output_dir)
    code, cause = save_failure_cause(error, folder)
    failure = SaveFailedError(
        f"Could not write the {what} ({type(error).__name__}: {error})"
        + (f"; {cause}" if cause else "")
        + f". Fix that, or pass another --output_dir{hint}. What was saved before is unchanged; continue with "
        "--resume_from_checkpoint latest."
    )
    failure.errno = code
    return failure


def prune_checkpoints(output_dir: str, total_limit: int | None, run: dict | None = None) -> None:
    """Delete the oldest complete checkpoints beyond `total_limit`, counting only those of `run` (a `run_identity`;
    None: all): each is renamed to its `retired_path` first (atomic), so that a deletion cut short leaves a
    `.checkpoint-N.old` folder for the next save to remove, not a half-deleted checkpoint."""
    if total_limit is None:
        return
    checkpoints = list_checkpoints(output_dir)
    if run is not None:
        checkpoints = [
            (step, path) for step, path in checkpoints if same_run(read_training_state(path).get("run"), run)
        ]
    for _, path in checkpoints[: max(0, len(checkpoints) - total_limit)]:
        retired = retired_path(path)
        shutil.rmtree(retired, ignore_errors=True)
        os.replace(path, retired)
        shutil.rmtree(retired)


def _remove_stale_temporaries(output_dir: str) -> None:
    """Half-written (.tmp) and half-deleted (.old) checkpoints of a killed or failed run."""
    _remove_matching(output_dir, _STALE)


# The files a checkpoint folder holds (TrainingState.save and STATE_FILE), and the hidden .tmpXXXXXXXX file of a
# safetensors write cut short: a folder named like a checkpoint's temporary but holding anything else is not
# hfdiff's, and is left alone.
_CHECKPOINT_FILE = re.compile(
    r"^((model|optimizer|scheduler|ema)\.safetensors|random_states_\d+\.safetensors|training_state\.json"
    r"|\.tmp\w+)$"
)


def holds_checkpoint_files_only(path: str) -> bool:
    """Whether the folder `path` (not a link) holds nothing but files a checkpoint writes."""
    if os.path.islink(path) or not os.path.isdir(path):
        return False
    return all(
        _CHECKPOINT_FILE.match(entry.name) and entry.is_file(follow_symlinks=False) for entry in os.scandir(path)
    )


def _remove_matching(output_dir: str, pattern: re.Pattern) -> None:
    if not os.path.isdir(output_dir):
        return
    for name in os.listdir(output_dir):
        if pattern.match(name) and holds_checkpoint_files_only(os.path.join(output_dir, name)):
            shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------------
# the run's identity: one --output_dir, one run
# ----------------------------------------------------------------------------------------------------------------


def run_identity(config, data, conditioning: str) -> dict:
    """What makes checkpoints one run's: the `IDENTITY_ENTRIES` of the config, the conditioning, the class names,
    the image count and shape, and a fingerprint of the data (SHA-256 of the labels, the captions and up to 256
    evenly spaced images: milliseconds, and any change of source or content shows)."""
    digest = hashlib.sha256()
    images = data.images
    for i in sorted(set(_sample_indices(len(images), 256))):
        digest.update(images[i].cpu().contiguous().numpy().tobytes())
    if data.labels is not None:
        digest.update(data.labels.cpu().contiguous().numpy().tobytes())
    for caption in data.captions or []:
        digest.update(caption.encode("utf-8") + b"\0")
    identity = {key: getattr(config, key) for key in IDENTITY_ENTRIES}
    identity.update(
        # the captions an image is drawn from: 1 wherever there is one (class runs, a data set's caption column)
        captions_per_image=len(data.caption_sets[0]) if getattr(data, "caption_sets", None) else 1,
        conditioning=conditioning,
        class_names=data.class_names,
        images=[len(images), *images.shape[1:]],
        data_sha256=digest.hexdigest()[:16],
    )
    return json.loads(json.dumps(identity))  # as it reads back from training_state.json (tuples become lists)


def _sample_indices(count: int, samples: int) -> list[int]:
    """Up to `samples` indices spread evenly over 0..count-1, first and last included."""
    samples = min(count, samples)
    return [round(i * (count - 1) / max(samples - 1, 1)) for i in range(samples)]


def identity_differences(saved: dict | None, current: dict) -> str:
    """`key: saved -> now` for each entry that differs; a checkpoint without an identity is an older hfdiff's."""
    if saved is None:
        return "it records no run identity (an older hfdiff wrote it)"
    keys = sorted(set(saved) | set(current))
    return "; ".join(
        f"{key}: {saved.get(key)!r} -> {current.get(key)!r}" for key in keys if saved.get(key) != current.get(key)
    )


def same_run(saved: dict | None, current: dict) -> bool:
    """Whether a checkpoint's recorded identity is `current`'s run."""
    return saved is not None and not identity_differences(saved, current)


def check_checkpoints_belong_to_run(config, identity: dict) -> None:
    """Before training: refuse to resume, or to start next to, another run's checkpoints in --output_dir; with
    --overwrite_output_dir move them aside instead (main process only; the caller waits for everyone after)."""
    output_dir, resume = config.output_dir, config.resume_from_checkpoint
    if config.overwrite_output_dir and resume:
        raise ValueError(
            f"--overwrite_output_dir with --resume_from_checkpoint {resume}: one starts a new run, the other continues "
            "an old one. Pass only one of them."
        )
    if resume:
        if resume == "latest" and _is_main_process():
            restore_set_aside(output_dir, identity)
        _wait_for_everyone()
        path = find_checkpoint(output_dir, resume)
        if path is not None:
            refuse_pickles(path)  # first: a checkpoint in a pickled format has no identity to compare either
            _refuse_foreign(path, identity, resume)
        return
    runs = {path: read_training_state(path).get("run") for _, path in list_checkpoints(output_dir)}
    foreign = [path for path, run in runs.items() if not same_run(run, identity)]
    own = [path for path, run in runs.items() if same_run(run, identity)]
    if foreign and not config.overwrite_output_dir:
        differences = identity_differences(read_training_state(foreign[-1]).get("run"), identity)
        raise ValueError(
            f"--output_dir {output_dir} holds checkpoints of another run ({', '.join(map(os.path.basename, foreign))}"
            f"; {differences}): this run's checkpoints would be pruned with them and --resume_from_checkpoint latest "
            "could restore the other run. Pass another --output_dir, or --overwrite_output_dir to start afresh there "
            "(the old checkpoints are deleted once this run's first checkpoint is saved)."
        )
    if own:
        logger.warning(
            f"{output_dir} holds checkpoints of this same run up to {os.path.basename(own[-1])}; starting from step 0 "
            "and replacing them. Pass --resume_from_checkpoint latest to continue instead.",
            main_process_only=True,
        )
    if config.overwrite_output_dir and foreign and _is_main_process():
        for path in foreign:
            aside = os.path.join(output_dir, f".{os.path.basename(path)}.overwritten")
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(path, aside)
        logger.warning(f"--overwrite_output_dir: moved {len(foreign)} checkpoints of another run aside.")


def _refuse_foreign(path: str, identity: dict, resume: str) -> None:
    saved = read_training_state(path).get("run")
    if same_run(saved, identity):
        return
    raise ValueError(
        f"--resume_from_checkpoint {resume}: {path} belongs to another run ({identity_differences(saved, identity)}"
        "; saved -> now). Resume it with the flags and data it was trained with, or start this run in another "
        "--output_dir (or pass --overwrite_output_dir without --resume_from_checkpoint to start afresh there)."
    )


def _is_main_process() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


def _wait_for_everyone() -> None:
    from accelerate import PartialState

    PartialState().wait_for_everyone()


def restore_set_aside(output_dir: str, identity: dict) -> None:
    """--resume_from_checkpoint latest after an --overwrite_output_dir run that never saved a checkpoint of its own:
    this run's checkpoints that it moved aside are moved back (a name already taken keeps the one there)."""
    if list_checkpoints(output_dir):
        return
    restored = []
    for name in sorted(os.listdir(output_dir)) if os.path.isdir(output_dir) else []:
        path = os.path.join(output_dir, name)
        if not _OVERWRITTEN.match(name) or not os.path.isfile(os.path.join(path, STATE_FILE)):
            continue
        if same_run(read_training_state(path).get("run"), identity):
            original = os.path.join(output_dir, name[1 : -len(".overwritten")])
            if not os.path.lexists(original):
                os.replace(path, original)
                restored.append(os.path.basename(original))
    if restored:
        logger.warning(
            f"Moved this run's checkpoints back from where --overwrite_output_dir had set them aside: "
            f"{', '.join(restored)}."
        )


def remove_set_aside(output_dir: str) -> None:
    """The checkpoints an --overwrite_output_dir run moved aside, once it has saved a checkpoint or its pipeline:
    only this run's flag deletes them, so a later run never deletes checkpoints that it did not set aside."""
    _remove_matching(output_dir, _OVERWRITTEN)
