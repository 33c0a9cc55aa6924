"""Whose --output_dir it is: training writes only into an empty folder or one that hfdiff's training or saves wrote,
marks the folder as a run's, and holds a lock on it while it trains, so that two runs never write into one folder.

The mark is `RUN_MARKER`, a small JSON file written when a run starts; a pipeline save's manifest
(`hfdiff.folder_swap.MANIFEST`), hfdiff checkpoints (checkpoint-N/training_state.json) or a model_index.json naming
SpriteDiffusionPipeline mark a run's folder that carries no marker. The lock is the `filelock` package's
(the one huggingface_hub uses for its cache): an OS lock (flock) on `LOCK_FILE`, which the kernel releases when the
process ends, however it ends, so a run killed with kill -9 never blocks the next one. Only the main process of a
launch holds it; the others learn whether it was taken from the main process.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager, suppress
from pathlib import Path

from hfdiff.folder_swap import MANIFEST, interrupted_swap, read_manifest, unchanged

RUN_MARKER = ".hfdiff-run.json"
LOCK_FILE = ".hfdiff-run.lock"
# Files the final save writes at the top of the folder: one of the user's there would stop that save after training.
FINAL_FILES = ("model_index.json", "README.md", "samples.png")


def is_hfdiff_folder(path: str) -> bool:
    """Whether `path` holds a run or a pipeline that hfdiff wrote (see the module docstring for the marks)."""
    names = os.listdir(path)
    if RUN_MARKER in names or MANIFEST in names or LOCK_FILE in names or interrupted_swap(Path(path)):
        return True
    for name in names:
        if name.startswith("checkpoint-") and os.path.isfile(os.path.join(path, name, "training_state.json")):
            return True
    try:
        with open(os.path.join(path, "model_index.json"), encoding="utf-8") as f:
            return "SpriteDiffusionPipeline" in json.dumps(json.load(f).get("_class_name"))
    except (OSError, ValueError, AttributeError):
        return False


def check_output_dir_owner(output_dir: str) -> None:
    """Before any work: refuse a non-empty --output_dir that is not an hfdiff run (its README.md, unet/ or folders
    named like a checkpoint's temporaries would be replaced or removed), and, in a run's folder, a file of the user's
    where the final save writes (it would stop that save after training)."""
    path = os.path.abspath(output_dir)
    if not os.path.isdir(path) or not os.listdir(path):
        return
    if not is_hfdiff_folder(path):
        raise ValueError(
            f"--output_dir {output_dir} holds files that hfdiff did not write ({', '.join(sorted(os.listdir(path))[:5])}"
            f"{', ...' if len(os.listdir(path)) > 5 else ''}): training writes a pipeline, README.md and checkpoints "
            "there. Pass a new or empty --output_dir."
        )
    manifest = read_manifest(path)
    has_index = os.path.isfile(os.path.join(path, "model_index.json"))
    if (manifest is not None and not has_index) or interrupted_swap(Path(path)):
        return  # a save killed during its swap: what is there is hfdiff's, and the final save repairs it
    if manifest is None and has_index:
        return  # a pipeline saved without a manifest: the final save replaces it as diffusers would
    for name in FINAL_FILES:
        file = os.path.join(path, name)
        if not os.path.lexists(file):
            continue
        if manifest is None or name not in manifest or not unchanged(path, name, manifest[name]):
            raise ValueError(
                f"--output_dir {output_dir}: {name} is not the one hfdiff saved there (yours, or edited), and the "
                "final save would have to replace it. Move it away, or pass another --output_dir."
            )


@contextmanager
def hold_output_dir(accelerator, output_dir: str):
    """Hold `output_dir`'s lock for the run (main process) and mark the folder as an hfdiff run; every process of the
    launch raises the same ValueError when another run holds it."""
    from filelock import FileLock, Timeout

    lock = None
    refusal = None
    created = accelerator.is_main_process and not os.path.exists(output_dir)
    if accelerator.is_main_process:
        os.makedirs(output_dir, exist_ok=True)
        lock = FileLock(os.path.join(output_dir, LOCK_FILE), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            refusal = (
                f"--output_dir {output_dir} is in use by another training run (it holds {LOCK_FILE}); wait for it "
                "to end, or pass another --output_dir."
            )
        else:
            marker = os.path.join(output_dir, RUN_MARKER)
            if not os.path.isfile(marker):
                with open(marker, "w", encoding="utf-8") as f:
                    json.dump({"written_by": "hfdiff training"}, f)
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        refusal = broadcast_object_list([refusal])[0]
    if refusal:
        raise ValueError(refusal)
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        if lock is not None:
            lock.release()
        if failed and created:
            _remove_if_untouched(output_dir)


def _remove_if_untouched(output_dir: str) -> None:
    """A run that failed before writing anything (a user error in the data, say) leaves no folder it created behind:
    only the lock and the marker are there, and both are hfdiff's."""
    try:
        if set(os.listdir(output_dir)) <= {LOCK_FILE, RUN_MARKER}:
            for name in (LOCK_FILE, RUN_MARKER):
                with suppress(FileNotFoundError):
                    os.remove(os.path.join(output_dir, name))
            os.rmdir(output_dir)
    except OSError:  # whatever is left is kept: the error that ended the run is the one to report
        pass
