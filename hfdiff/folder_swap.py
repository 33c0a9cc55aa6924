"""Atomic folder swaps: how hfdiff replaces a saved pipeline or a training checkpoint on disk.

Every swap is a sequence of rename(2) calls inside one filesystem, so a process killed at any moment leaves the old
entry or the new one, never a mix; what a failed write means (a full disk, a read-only filesystem, ...) is read from
its errno in one place. Pipeline saves (`hfdiff.folder_saving`) and checkpoints (`hfdiff.training.checkpoints`) both
go through this module. A pipeline save also leaves a manifest of the files it wrote (`MANIFEST`: names, sizes,
SHA-256), which is how hfdiff tells its own files from the user's: uploads send exactly those files, and a later save
replaces or removes only those. Standard library only.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path


def retired_path(path: str | os.PathLike) -> Path:
    """Where `replace_path` (and checkpoint pruning) parks an entry before deleting it: `.<name>.old` beside it."""
    path = Path(path)
    return path.parent / f".{path.name}.old"


def remove_entry(path: str | os.PathLike) -> None:
    """Remove `path` whatever it is, without following a symbolic link (the link goes, what it points to stays);
    nothing happens when it does not exist. A folder that cannot be removed whole raises."""
    path = Path(path)
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def replace_path(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Move the file or folder `src` to `dst` (in the same filesystem), replacing what is there. Each step is one
    rename(2): a file is replaced atomically; a folder (which rename cannot replace while it is non-empty) is first
    renamed aside to `retired_path(dst)`, and deleted only after the new one is in place, so `dst` is always the old
    or the new entry, or absent for the instant between the two renames (and the old one again if the second rename
    fails). A `dst` that is a symbolic link is renamed and removed as a link: what it points to is never touched.
    The one folder swap of hfdiff: pipeline saves and training checkpoints both go through it."""
    src, dst = Path(src), Path(dst)
    if src.is_dir() and os.path.lexists(dst):
        retired = retired_path(dst)
        remove_entry(retired)
        os.replace(dst, retired)
        try:
            os.replace(src, dst)
        except OSError:
            os.replace(retired, dst)
            raise
        remove_entry(retired)
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
    """Move every entry of `staging` into `target`. The old model_index.json is renamed aside first and the new one
    moved in last (each one rename), so whenever `target` has an index, every component it names is the one saved
    with it: the previous pipeline until the first rename, the new one after the last, no pipeline in between. Each
    old entry is kept aside (`retired_path`: a folder renamed there, a file hard-linked there and replaced by one
    rename, so that a name such as the manifest is never missing) until every new one is in place: a rename that
    fails part-way puts the old entries back, so a failed swap leaves the previous pipeline loadable; only a process
    killed during the renames leaves no index, which the next save repairs. Symbolic links in `target` are renamed
    as links: what they point to is never changed."""
    # The manifest first and the index last: a swap cut short leaves no index, and the manifest of the save whose
    # entries are there.
    entries = sorted(staging.iterdir(), key=lambda path: (path.name != MANIFEST) + (path.name == "model_index.json"))
    index = target / "model_index.json"
    for entry in entries:  # what a swap killed part-way left aside
        remove_entry(retired_path(target / entry.name))
    moved: list[Path] = []  # entries of `target` whose old version waits at its retired_path
    added: list[Path] = []  # entries of `target` that had no old version
    try:
        if os.path.lexists(index):
            _set_aside(index)
            moved.append(index)
        for entry in entries:
            dst = target / entry.name
            if dst != index and os.path.lexists(dst):
                # a file is replaced by one rename, its old version linked aside for an undo: never missing
                _set_aside(dst, keep_in_place=entry.is_file() and not dst.is_dir())
                moved.append(dst)
            elif dst != index:
                added.append(dst)
            os.replace(entry, dst)
    except OSError:
        for dst in added:
            remove_entry(dst)
        for dst in reversed(moved):
            if os.path.lexists(retired_path(dst)):
                if os.path.isdir(dst) and not os.path.islink(dst):
                    remove_entry(dst)
                os.replace(retired_path(dst), dst)
        raise
    for dst in moved:
        remove_entry(retired_path(dst))


def _set_aside(path: Path, keep_in_place: bool = False) -> None:
    """Move `path` to its retired_path; with `keep_in_place` (a file about to be replaced by one rename), keep it
    where it is too, as a hard link (a copy where the filesystem has none), so that the name is never missing."""
    retired = retired_path(path)
    remove_entry(retired)
    if not keep_in_place:
        os.replace(path, retired)
        return
    try:
        os.link(path, retired, follow_symlinks=False)
    except OSError:
        shutil.copy2(path, retired, follow_symlinks=False)


def interrupted_swap(target: Path) -> bool:
    """Whether `target` shows a pipeline swap cut short: no model_index.json, the old one set aside."""
    return not os.path.lexists(target / "model_index.json") and os.path.lexists(
        retired_path(target / "model_index.json")
    )


# ----------------------------------------------------------------------------------------------------------------
# what a save wrote
# ----------------------------------------------------------------------------------------------------------------

# Written by every pipeline save beside model_index.json (the first entry its swap moves in): {"files": {name: {"size": n,
# "sha256": hex}}}, names relative to the folder with "/" separators. Hidden, so it is not part of the pipeline.
MANIFEST = ".hfdiff-save.json"


def file_digest(path: str | os.PathLike) -> dict:
    """{"size", "sha256"} of the regular file `path`, read without following a symbolic link (O_NOFOLLOW)."""
    digest = hashlib.sha256()
    size = 0
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
            size += len(block)
    return {"size": size, "sha256": digest.hexdigest()}


def write_manifest(folder: Path, names: list[str]) -> None:
    """Record `names` (files in `folder`, relative, "/"-separated) with their sizes and hashes in `folder/MANIFEST`."""
    files = {name: file_digest(folder / name) for name in sorted(names)}
    (folder / MANIFEST).write_text(json.dumps({"files": files}, indent=1) + "\n", encoding="utf-8")


def read_manifest(folder: Path) -> dict[str, dict] | None:
    """The files the last save into `folder` wrote ({name: {"size", "sha256"}}), or None where no hfdiff save wrote
    one (a folder saved by diffusers alone, or by an hfdiff without manifests, or not a pipeline at all). A manifest
    that does not parse, or names a path outside the folder, counts as none."""
    path = Path(folder) / MANIFEST
    if path.is_symlink() or not path.is_file():
        return None
    try:
        files = json.loads(path.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(files, dict) or not all(_inside(name) and isinstance(v, dict) for name, v in files.items()):
        return None
    return files


def _inside(name) -> bool:
    """A relative name of at most one folder level, with no way out of the folder."""
    if not isinstance(name, str) or not name or name.startswith("/") or "\\" in name:
        return False
    parts = name.split("/")
    return len(parts) <= 2 and all(part not in ("", ".", "..") for part in parts)


def unchanged(folder: Path, name: str, record: dict) -> bool:
    """Whether `folder/name` is still the regular file a save wrote (same size and SHA-256, not a link)."""
    folder = Path(folder)
    path = folder / name
    parent = path.parent
    if parent != folder and (parent.is_symlink() or not parent.is_dir()):
        return False
    if path.is_symlink() or not path.is_file():
        return False
    try:
        return path.stat().st_size == record.get("size") and file_digest(path) == record
    except OSError:
        return False
