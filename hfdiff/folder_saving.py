"""Writing a pipeline folder: what `SpriteDiffusionPipeline.save_pretrained` runs where hfdiff is installed.

diffusers' own `save_pretrained` writes the weights (safetensors) and configs into a staging folder; hfdiff adds the
code of every component diffusers users do not have (`export_code`, so the folder loads with diffusers alone and
`trust_remote_code=True`), the model card and, when asked for, the Space app; then `hfdiff.folder_swap` moves it all
into place by renames, so a save killed at any moment leaves the old pipeline or the new one, never a mix.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
from pathlib import Path

from diffusers import DiffusionPipeline

from hfdiff.demo_app import drop_stale_app, write_app
from hfdiff.folder_loading import read_json, weights_variant
from hfdiff.folder_swap import check_swappable, move_entries, new_staging_folder, save_error
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
    target = Path(save_directory).absolute()
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OSError(
            f"Cannot save the pipeline to {target}: the folder cannot be created ({error}). Choose a folder you "
            "can write to."
        ) from error
    try:
        staging = new_staging_folder(target)
    except OSError as error:
        raise save_error(target, error, "Nothing in the folder was changed") from error
    try:
        try:
            write_pipeline(pipe, staging, variant, max_shard_size, model_card, demo_app)
            keep_other_variants(staging, target)
            check_swappable(staging, target)
        except Exception as error:  # OSError, or safetensors' SafetensorError, for the same full disk
            raise save_error(target, error, "Nothing in the folder was changed") from error
        try:
            move_entries(staging, target)
        except OSError as error:
            raise save_error(
                target,
                error,
                "The save stopped part-way: the folder has no model_index.json now (from_pretrained says so), "
                "so no mix of old and new components can load. Save again once the cause is fixed",
            ) from error
        if not demo_app:
            drop_stale_app(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if push_to_hub:
        upload_pipeline_folder(target, **upload)


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


# Config entries without which a component would be built from defaults that differ from the saved model, silently


def keep_other_variants(staging: Path, target: Path) -> None:
    """Copy into the staged components the weights of other variants already saved in `target` (a save with
    variant="fp16" beside a full-precision one keeps both, as diffusers does), where the component's config is
    unchanged; a changed config means other weights no longer fit, and they are dropped with the old folder."""
    for staged in (path for path in staging.iterdir() if path.is_dir()):
        existing = target / staged.name
        configs = [name for name in ("config.json",) if (staged / name).is_file()]
        if not configs or not (existing / configs[0]).is_file():
            continue
        if read_json(existing / configs[0]) != read_json(staged / configs[0]):
            continue
        written = {weights_variant(path) for path in staged.glob("*.safetensors")}
        for path in existing.glob("*.safetensors"):
            if weights_variant(path) not in written and not (staged / path.name).exists():
                shutil.copy2(path, staged / path.name)
