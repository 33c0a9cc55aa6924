"""Atomic folder swaps: how hfdiff replaces a saved pipeline or a training checkpoint on disk.

Every swap is a sequence of rename(2) calls inside one filesystem, so a process killed at any moment leaves the old
entry or the new one, never a mix; what a failed write means (a full disk, a read-only filesystem, ...) is read from
its errno in one place. Pipeline saves (`hfdiff.folder_saving`) and checkpoints (`hfdiff.training.checkpoints`) both
go through this module. Standard library only.
"""

from __future__ import annotations

import errno
import glob
import os
import shutil
import tempfile
from pathlib import Path


def retired_path(path: str | os.PathLike) -> Path:
    """Where `replace_path` (and checkpoint pruning) parks an entry before deleting it: `.<name>.old` beside it."""
    path = Path(path)
    return path.parent / f".{path.name}.old"


def replace_path(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Move the file or folder `src` to `dst` (in the same filesystem), replacing what is there. Each step is one
    rename(2): a file is replaced atomically; a folder (which rename cannot replace while it is non-empty) is first
    renamed aside to `retired_path(dst)`, and deleted only after the new one is in place, so `dst` is always the old
    or the new entry, or absent for the instant between the two renames (and the old one again if the second rename
    fails). The one folder swap of hfdiff: pipeline saves and training checkpoints both go through it."""
    src, dst = Path(src), Path(dst)
    if src.is_dir() and dst.exists():
        retired = retired_path(dst)
        shutil.rmtree(retired, ignore_errors=True)
        os.replace(dst, retired)
        try:
            os.replace(src, dst)
        except OSError:
            os.replace(retired, dst)
            raise
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(src, dst)


# Where a save is staged, inside the target folder: renames from there into the target never cross a filesystem.
STAGING_PREFIX = ".saving-"


def new_staging_folder(target: Path) -> Path:
    """An empty staging folder inside `target`, after removing those of saves that were killed (two saves into one
    folder at once are not supported anyway). Nothing in `target`'s parent is created or removed."""
    for stale in target.glob(glob.escape(STAGING_PREFIX) + "*"):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=target))


def check_swappable(staging: Path, target: Path) -> None:
    """Before the old index is removed: every entry the swap renames (the staged ones, and the old ones they
    replace, which are renamed aside inside `target`) is on the staging folder's filesystem, so no rename of the
    swap can fail with EXDEV half-way. An old component folder can be elsewhere only as a mount point; a symbolic
    link is renamed itself, wherever it points."""
    device = os.stat(staging).st_dev
    for entry in staging.iterdir():
        existing = target / entry.name
        if existing.exists() and not existing.is_symlink() and os.stat(existing).st_dev != device:
            raise OSError(
                errno.EXDEV,
                f"{existing} is on another filesystem than {target} (a mount point), so a save cannot replace it "
                "by renaming",
            )


# errno values of writes that did not fit: a full disk, a quota, a file size limit (ulimit -f).
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_CAUSES = {
    errno.EXDEV: "a rename would cross filesystems: save to a folder whose entries are on one filesystem",
    errno.EACCES: "permission denied: save to a folder you can write to, or fix its permissions",
    errno.EPERM: "the operation is not permitted there: save to a folder you can write to, or fix its permissions",
    errno.EROFS: "the filesystem is read-only: save to a folder on a writable one",
}


def save_failure_cause(error: BaseException, folder: str | os.PathLike) -> tuple[int | None, str | None]:
    """(errno, cause and fix in words) of a write into `folder` that failed with `error`: by its errno, or, for
    errors that carry none (safetensors' SafetensorError, torch's RuntimeError), by the system's message for it in
    the text; (None, None) for an error of another kind, which callers quote rather than guess at. The one reading
    of a failed save: pipeline saves and training checkpoints both use it."""
    code = getattr(error, "errno", None)
    if code is None:
        code = next((c for c in (*_NO_ROOM, *_CAUSES) if os.strerror(c) in str(error)), None)
    if code in _NO_ROOM:
        folder = Path(folder)
        try:
            free = f"{shutil.disk_usage(folder if folder.exists() else folder.parent).free / 2**20:,.0f} MiB free"
        except OSError:
            free = "free space unknown"
        return code, f"the disk is full or a file size limit was reached ({free} there): free space, or save elsewhere"
    return code, _CAUSES.get(code)


def save_error(target: Path, error: Exception, state: str) -> OSError:
    """An OSError for a save into `target` that failed with `error`, naming the cause (`save_failure_cause`), the fix,
    and `state`: what the failure left in the folder. Keeps the errno, so callers can test it."""
    code, cause = save_failure_cause(error, target)
    failure = OSError(
        f"Could not save the pipeline to {target} ({type(error).__name__}: {error})"
        + (f"; {cause}. " if cause else ". ")  # an error of another kind is quoted, not guessed at
        + f"{state}."
    )
    failure.errno = code
    return failure


def move_entries(staging: Path, target: Path) -> None:
    """Move every entry of `staging` into `target` with `replace_path`. The old model_index.json is deleted first and
    the new one moved in last (each atomic), so whenever `target` has an index, every component it names is the one
    saved with it: the previous pipeline until the first deletion, the new one after the last move, no pipeline in
    between."""
    index = target / "model_index.json"
    if index.exists():
        index.unlink()
    for entry in sorted(staging.iterdir(), key=lambda path: path.name == "model_index.json"):
        replace_path(entry, target / entry.name)
