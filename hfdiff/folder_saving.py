"""Writing a pipeline folder: what `SpriteDiffusionPipeline.save_pretrained` runs where hfdiff is installed.

diffusers' own `save_pretrained` writes the weights (safetensors) and configs into a staging folder; hfdiff adds the
code of every component diffusers users do not have (`export_code`, so the folder loads with diffusers alone and
`trust_remote_code=True`), the model card and, when asked for, the Space app; then `hfdiff.folder_swap` moves it all
into place by renames, so a save killed at any moment leaves the old pipeline or the new one, never a mix.

A save touches only what hfdiff wrote: every save records its files in a manifest (`hfdiff.folder_swap.MANIFEST`), and
the next save replaces or removes only files that the manifest lists and that are unchanged since. A file of the
user's where the save would write (a README.md, an app.py of their own, an edited model card) stops the save before
anything changes; the user's own files inside a component folder (unet/notes.txt) are carried into the new one.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
from pathlib import Path

from diffusers import DiffusionPipeline

from hfdiff.demo_app import APP_FILES, is_hfdiff_app, write_app
from hfdiff.folder_loading import read_json, weights_variant
from hfdiff.folder_swap import (
    MANIFEST,
    check_swappable,
    interrupted_swap,
    move_entries,
    new_staging_folder,
    read_manifest,
    remove_entry,
    save_error,
    unchanged,
    write_manifest,
)
from hfdiff.hub import build_model_card, check_repo_id, pop_upload_kwargs, upload_pipeline_folder

# Libraries a diffusers-only user has: components from these are referenced by name, everything else travels as code.
INSTALLED_LIBRARIES = ("diffusers", "transformers")


def save_pipeline(
    pipe,
    save_directory: str | os.PathLike,
    variant: str | None = None,
    max_shard_size: int | str | None = None,
    push_to_hub: bool = False,
    model_card=None,
    demo_app: bool = False,
    **kwargs,
) -> None:
    """`SpriteDiffusionPipeline.save_pretrained` (its docstring says what the folder holds and what a failed save
    leaves): stage the whole pipeline inside `save_directory`, swap it in, then upload it when `push_to_hub`."""
    upload = pop_upload_kwargs(kwargs, default_repo_id=Path(save_directory).absolute().name)
    if kwargs:
        raise TypeError(f"Unexpected arguments for save_pretrained: {sorted(kwargs)}.")
    if push_to_hub:
        check_repo_id(upload["repo_id"])  # before writing anything
    target = save_folder(pipe, save_directory, variant, max_shard_size, model_card, demo_app)
    if push_to_hub:
        upload_pipeline_folder(target, **upload)


def save_folder(
    pipe, save_directory, variant=None, max_shard_size=None, model_card=None, demo_app=False, extra_files=None
) -> Path:
    """Stage the pipeline inside `save_directory`, record what was written (`MANIFEST`), check that nothing of the
    user's is in the way (a ValueError naming it, before any change), swap it in; returns the folder's absolute path.
    `extra_files` ({name: function writing that file}) adds files to the same save, such as training's samples.png,
    so that they are swapped in, recorded and uploaded with it."""
    target = Path(save_directory).absolute()
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OSError(
            f"Cannot save the pipeline to {target}: the folder cannot be created ({error}). Choose a folder you "
            "can write to."
        ) from error
    previous = read_manifest(target)
    try:
        staging = new_staging_folder(target)
    except OSError as error:
        raise save_error(target, error, "Nothing in the folder was changed") from error
    try:
        try:
            write_pipeline(pipe, staging, variant, max_shard_size, model_card, demo_app)
            for name, write in (extra_files or {}).items():
                write(staging / name)
            keep_other_variants(staging, target, previous)
            written = staged_files(staging)
            write_manifest(staging, written)
            in_the_way = foreign_entries(target, staging, previous)
            if not in_the_way:
                carry_user_files(staging, target, previous)
                check_swappable(staging, target)
        except Exception as error:  # OSError, or safetensors' SafetensorError, for the same full disk
            raise save_error(target, error, "Nothing in the folder was changed") from error
        if in_the_way:
            raise ValueError(
                f"Cannot save the pipeline to {target}: {'; '.join(in_the_way)}. hfdiff replaces only files that it "
                "wrote, unchanged since: move these away (or save to another folder). Nothing was changed."
            )
        try:
            move_entries(staging, target)
        except OSError as error:
            raise save_error(
                target,
                error,
                "The swap was undone: the folder holds the previous pipeline. Save again once the cause is fixed",
            ) from error
        remove_stale_files(target, previous, written)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def staged_files(staging: Path) -> list[str]:
    """Every file of the staged save, relative and "/"-separated: what the manifest records."""
    return sorted(str(path.relative_to(staging).as_posix()) for path in staging.rglob("*") if path.is_file())


def foreign_entries(target: Path, staging: Path, previous: dict | None) -> list[str]:
    """What in `target` the swap of `staging` would replace that hfdiff did not write, each named with why; empty
    when the save may go ahead. With a manifest (`previous`), only its unchanged files may be replaced. Without one,
    a folder holding a model_index.json is a pipeline saved without one (diffusers alone, an hfdiff that wrote none), replaced as diffusers does
    (except an app.py that is not hfdiff's, and its requirements.txt); any other folder is the user's, and nothing
    in it is replaced."""
    found = []
    if previous is not None and not (target / "model_index.json").is_file():
        return found  # a save killed during its swap: what is there is that save's (or the one before it)
    if interrupted_swap(target):
        return found  # the same, where the swap was cut short before its manifest moved in
    legacy = previous is None and (target / "model_index.json").is_file()
    for entry in sorted(staging.iterdir()):
        name = entry.name
        existing = target / name
        if name == MANIFEST or not os.path.lexists(existing):
            continue
        if previous is None:
            if not legacy:
                found.append(f"{name} is not from an hfdiff save")
            elif name in APP_FILES and not is_hfdiff_app(target):
                found.append(f"{name} is your own (an app.py that hfdiff did not write)")
            continue
        if entry.is_file():
            if name not in previous:
                found.append(f"{name} is not from an hfdiff save")
            elif not unchanged(target, name, previous[name]):
                found.append(f"{name} was changed since hfdiff saved it")
            continue
        if existing.is_symlink() or not existing.is_dir():
            found.append(f"{name} is a {'symbolic link' if existing.is_symlink() else 'file'}, not hfdiff's folder")
            continue
        for path in sorted(existing.iterdir()):
            relative = f"{name}/{path.name}"
            if relative in previous:
                if not unchanged(target, relative, previous[relative]):
                    found.append(f"{relative} was changed since hfdiff saved it")
            elif (entry / path.name).exists():
                found.append(f"{relative} is not from an hfdiff save, and the save writes a file of that name")
    return found


def carry_user_files(staging: Path, target: Path, previous: dict | None) -> None:
    """Copy into each staged component folder the user's own entries of the one it replaces (those the manifest
    does not list), so that replacing the folder keeps them; links are copied as links. They stay out of the new
    manifest: they are not the pipeline's, and are not uploaded."""
    if previous is None:
        return
    for entry in (path for path in staging.iterdir() if path.is_dir()):
        existing = target / entry.name
        if existing.is_symlink() or not existing.is_dir():
            continue
        for path in existing.iterdir():
            if f"{entry.name}/{path.name}" in previous or os.path.lexists(entry / path.name):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.copytree(path, entry / path.name, symlinks=True)
            else:
                shutil.copy2(path, entry / path.name, follow_symlinks=False)


def remove_stale_files(target: Path, previous: dict | None, written: list[str]) -> None:
    """Remove the top-level files of the previous save that this one did not write (the app.py and requirements.txt
    of a save with demo_app=True, a samples.png of training, code files of components that are gone): they belong to
    a save that is gone. Only files unchanged since that save: an app.py the user edited stays."""
    if previous is None:
        return
    for name, record in previous.items():
        if "/" not in name and name not in written and unchanged(target, name, record):
            remove_entry(target / name)


def write_pipeline(pipe, folder: Path, variant, max_shard_size, model_card, demo_app: bool = False) -> None:
    """Write the whole pipeline into the empty `folder`: weights and configs (diffusers' `save_pretrained`), the
    exported code, the model card (built from the pipeline when `model_card` is None) and the demo app when asked
    for."""
    DiffusionPipeline.save_pretrained(
        pipe, folder, safe_serialization=True, variant=variant, max_shard_size=max_shard_size
    )
    export_code(pipe, folder)
    if demo_app:
        write_app(folder)
    if model_card is None:
        model_card = build_model_card(pipe, demo_app=demo_app)
    model_card.save(folder / "README.md")


def export_code(pipe, folder: str | os.PathLike) -> None:
    """`SpriteDiffusionPipeline.export_code`: copy the source of the pipeline and of every non-diffusers component
    into a saved folder, in the layout of diffusers' custom-code loader, and point model_index.json at those files:
    `_class_name: [pipeline_file, class]` at the top, `[module_file, class]` for each component."""
    folder = Path(folder)
    index_path = folder / "model_index.json"
    index = json.loads(index_path.read_text(encoding="utf-8"))
    pipeline_entry = copy_class_source(type(pipe), folder)
    if pipeline_entry is not None:
        index["_class_name"] = pipeline_entry
    for name in pipe._component_names():
        component = getattr(pipe, name, None)
        entry = None if component is None else copy_class_source(type(component), folder / name)
        if entry is not None:
            index[name] = entry
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def copy_class_source(cls: type, folder: Path) -> list[str] | None:
    """Copy the module defining `cls` (and the sibling modules it imports relatively) into `folder`; returns the
    model_index.json entry [module_file_stem, class_name], or None for classes diffusers users already have."""
    if cls.__module__.split(".")[0] in INSTALLED_LIBRARIES:
        return None
    from diffusers.utils.dynamic_modules_utils import get_relative_import_files

    source = Path(inspect.getsourcefile(cls))
    folder.mkdir(parents=True, exist_ok=True)
    for path in [source, *map(Path, get_relative_import_files(source))]:
        shutil.copyfile(path, folder / path.name)
    return [source.stem, cls.__name__]


def keep_other_variants(staging: Path, target: Path, previous: dict | None = None) -> None:
    """Copy into the staged components the weights of other variants already saved in `target` (a save with
    variant="fp16" beside a full-precision one keeps both, as diffusers does), where the component's config is
    unchanged; a changed config means other weights no longer fit, and they are dropped with the old folder. With a
    manifest (`previous`), only weights it lists, unchanged: the user's own files are carried over as theirs."""
    for staged in (path for path in staging.iterdir() if path.is_dir()):
        existing = target / staged.name
        configs = [name for name in ("config.json",) if (staged / name).is_file()]
        if existing.is_symlink() or not configs or not (existing / configs[0]).is_file():
            continue
        if read_json(existing / configs[0]) != read_json(staged / configs[0]):
            continue
        written = {weights_variant(path) for path in staged.glob("*.safetensors")}
        for path in existing.glob("*.safetensors"):
            relative = f"{staged.name}/{path.name}"
            if previous is not None and (
                relative not in previous or not unchanged(target, relative, previous[relative])
            ):
                continue
            if weights_variant(path) not in written and not (staged / path.name).exists() and not path.is_symlink():
                shutil.copy2(path, staged / path.name)
