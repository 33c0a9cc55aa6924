"""Reading a saved pipeline folder: what `SpriteDiffusionPipeline.from_pretrained` runs where hfdiff is installed.

`DiffusionPipeline.from_pretrained`'s keywords (download options, variants, dtypes), the folder itself or the Hub
repo's pipeline files only, and each component built from its installed class (hfdiff's, diffusers' or
transformers') after its config and weights are checked: no code from the folder is run and nothing is unpickled.
The exported copy of the pipeline, running with diffusers alone, loads through diffusers instead.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from hfdiff.pipelines.text_encoding import check_text_encoder_config
from hfdiff.schedulers._math import check_config_limits as check_scheduler_config_limits

# Weight formats loaded through pickle, which can run code: never loaded, named in an error instead.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")

DOWNLOAD_KEYS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision")
# Keywords of DiffusionPipeline.from_pretrained that this pipeline does not take, with what to do instead.
UNSUPPORTED_LOAD_KEYS = {
    "custom_pipeline": "the pipeline class is SpriteDiffusionPipeline itself; load other pipelines with their class",
    "custom_revision": "no pipeline code is fetched where hfdiff is installed; pass `revision` for the weights",
    "device_map": "load, then move the pipeline with pipe.to(device)",
    "max_memory": "the models are small enough to load whole; move them with pipe.to(device)",
    "offload_folder": "the models are small enough to load whole; use pipe.enable_model_cpu_offload() to offload",
    "offload_state_dict": "the models are small enough to load whole",
    "quantization_config": "quantizing a UNet of a few million parameters saves nothing; use torch_dtype",
    "use_onnx": "only safetensors weights are loaded",
    "use_flashpack": "only safetensors weights are loaded",
    "load_connected_pipeline": "this pipeline has no connected pipelines",
}
# Each component slot's expected base class, as (library, class name): a model_index.json that names another kind
# of class for a slot (say, a model class for the scheduler) is refused before anything is read from its folder.
SLOT_BASES = {
    "unet": ("diffusers", "ModelMixin"),
    "scheduler": ("diffusers", "SchedulerMixin"),
    "text_encoder": ("transformers", "PreTrainedModel"),
    "tokenizer": ("transformers", "PreTrainedTokenizerBase"),
}
# Where component classes are looked up by the name model_index.json gives: never an arbitrary module.
CLASS_SOURCES = ("hfdiff", "diffusers", "transformers")
# Weights of other formats in a component folder are not downloaded (and never loaded).
NOT_DOWNLOADED = ["*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.pickle", "*.msgpack", "*.h5", "*.onnx", "*.py"]


@dataclass
class LoadOptions:
    """The keywords of `from_pretrained`, sorted by what they are for."""

    download: dict
    variant: str | None = None
    torch_dtype: torch.dtype | dict | None = None
    low_cpu_mem_usage: bool | None = None

    @classmethod
    def from_kwargs(cls, kwargs: dict) -> "LoadOptions":
        for key, instead in UNSUPPORTED_LOAD_KEYS.items():
            if kwargs.get(key) is not None:
                raise ValueError(f"SpriteDiffusionPipeline.from_pretrained does not take {key}: {instead}.")
            kwargs.pop(key, None)
        if kwargs.pop("use_safetensors", None) is False:
            raise ValueError(
                "use_safetensors=False: hfdiff loads safetensors weights only (pickled weights can run code when "
                "loaded). Leave use_safetensors unset, or convert the weights once with diffusers."
            )
        kwargs.pop("trust_remote_code", None)  # no remote code runs where hfdiff is installed (see from_pretrained)
        options = cls(
            download={key: kwargs.pop(key) for key in DOWNLOAD_KEYS if key in kwargs},
            variant=kwargs.pop("variant", None),
            torch_dtype=kwargs.pop("torch_dtype", kwargs.pop("dtype", None)),
            low_cpu_mem_usage=kwargs.pop("low_cpu_mem_usage", None),
        )
        if kwargs:
            raise TypeError(f"Unexpected arguments for SpriteDiffusionPipeline.from_pretrained: {sorted(kwargs)}.")
        return options

    def dtype_for(self, name: str) -> torch.dtype | None:
        if isinstance(self.torch_dtype, dict):
            return self.torch_dtype.get(name, self.torch_dtype.get("default"))
        return self.torch_dtype


def pipeline_folder(name_or_path: str | os.PathLike, options: LoadOptions) -> Path:
    """A local pipeline folder, or the Hub repo's pipeline files downloaded into the cache (files only: nothing in the
    repo is imported or unpickled by fetching it)."""
    folder = Path(name_or_path)
    if not folder.is_dir():
        from huggingface_hub import hf_hub_download, snapshot_download
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(str(name_or_path))
        except HFValidationError:
            raise FileNotFoundError(
                f"{name_or_path} is not a folder (and not a Hub repo id such as 'user/model'): check the path, or "
                "save a pipeline there with pipe.save_pretrained(path)."
            ) from None
        index = read_json(hf_hub_download(str(name_or_path), "model_index.json", **options.download))
        components = [name for name in index if name in SLOT_BASES]
        allow = ["model_index.json"]
        for name in components:  # configs and tokenizer files, then the weights of the requested variant only
            allow += [f"{name}/*.json", f"{name}/*.txt", f"{name}/*.model"]
            if options.variant is None:
                allow += [f"{name}/*.safetensors"]
            else:
                allow += [f"{name}/*.{options.variant}.safetensors", f"{name}/*.{options.variant}-*.safetensors"]
        # `name.fp16.safetensors` matches `*.safetensors` too: with no variant asked for, leave variants out.
        ignore = NOT_DOWNLOADED + (["*.*.safetensors"] if options.variant is None else [])
        folder = Path(
            snapshot_download(str(name_or_path), allow_patterns=allow, ignore_patterns=ignore, **options.download)
        )
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        if any((folder / name).is_dir() for name in SLOT_BASES):
            raise FileNotFoundError(
                f"{index_path} does not exist, but {folder} has pipeline components: a save that was cut short "
                "(model_index.json is written last). Save the pipeline again with pipe.save_pretrained(path), "
                "or rerun the training with --resume_from_checkpoint latest, which saves it at the end."
            )
        raise FileNotFoundError(
            f"{index_path} does not exist: {name_or_path} is not a saved pipeline folder "
            "(save one with pipe.save_pretrained(path))."
        )
    return folder


def component_class(index_path: Path, name: str, entry) -> type:
    """The installed class model_index.json names for slot `name`, checked against the slot's expected base."""
    if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], str)):
        raise ValueError(f"{index_path} has no [library, class] entry for {name!r}; the folder is incomplete.")
    modules = [importlib.import_module(source) for source in CLASS_SOURCES if importlib.util.find_spec(source)]
    component_cls = next((getattr(m, entry[1]) for m in modules if isinstance(getattr(m, entry[1], None), type)), None)
    if component_cls is None:
        raise ValueError(
            f"{index_path} names {entry[1]!r} for {name!r}, which none of {', '.join(CLASS_SOURCES)} defines; "
            f"upgrade them or pass the component in (e.g. {name}=...)."
        )
    library, base_name = SLOT_BASES.get(name, ("diffusers", "ConfigMixin"))
    base = getattr(importlib.import_module(library), base_name)
    if not issubclass(component_cls, base):
        raise ValueError(
            f"{index_path} names {entry[1]!r} for the {name!r} slot, which takes a {base_name} ({library}); the "
            "index is damaged or was edited. Save the pipeline again with pipe.save_pretrained(path)."
        )
    return component_cls


def load_component(folder: Path, name: str, index: dict, options: LoadOptions, optional: bool = False):
    """One component from its subfolder, by its installed class: configs checked, weights from safetensors only."""
    index_path = folder / "model_index.json"
    entry = index.get(name)
    if optional and entry in (None, [None, None]):
        return None  # an optional component the pipeline was saved without
    component_cls = component_class(index_path, name, entry)
    component_folder = folder / name
    if not component_folder.is_dir():
        raise FileNotFoundError(
            f"{index_path} names a {name!r} component but {component_folder} does not exist; the folder is "
            "incomplete: save it again with pipe.save_pretrained(path)."
        )
    if name in REQUIRED_CONFIG:
        check_config(component_cls, component_folder, name)
    if name == "text_encoder" and (component_folder / "config.json").is_file():  # sizes, before anything is built
        check_text_encoder_config(read_json(component_folder / "config.json"), str(component_folder / "config.json"))
    if issubclass(component_cls, torch.nn.Module):
        # diffusers models save diffusion_pytorch_model.safetensors, transformers models model.safetensors
        diffusers_model = component_cls.__module__.split(".")[0] in ("diffusers", "hfdiff") or name == "unet"
        check_weights(component_folder, options.variant, "diffusion_pytorch_model" if diffusers_model else "model")
        model_kwargs = {"torch_dtype": options.dtype_for(name), "use_safetensors": True, "variant": options.variant}
        if options.low_cpu_mem_usage is not None:
            model_kwargs["low_cpu_mem_usage"] = options.low_cpu_mem_usage
        model = component_cls.from_pretrained(str(component_folder), **model_kwargs)
        check_finite_weights(model, name, component_folder)
        return model
    return component_cls.from_pretrained(str(component_folder))  # schedulers, tokenizers: configs and vocabularies


def check_finite_weights(model: torch.nn.Module, name: str, component_folder: Path) -> None:
    """Refuse weights that load but hold NaN or inf (a run that diverged, a damaged file): they sample black images
    with no error. One pass over the tensors: about 0.1 s for 100M parameters on a CPU."""
    for tensor_name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and tensor.device.type != "meta" and not torch.isfinite(tensor).all():
            count = int((~torch.isfinite(tensor)).sum())
            raise ValueError(
                f"The {name!r} component in {component_folder} has {count} NaN or infinite value(s) in "
                f"{tensor_name!r}: the weights are damaged (a training run that diverged, or a corrupted file) and "
                "would give black images. Load an earlier checkpoint, or train again (a lower learning rate, "
                "--mixed_precision no)."
            )


def weights_variant(path: Path) -> str | None:
    """The variant in a weights file name, as diffusers and transformers write them: "model.fp16.safetensors" and
    "model.fp16-00001-of-00002.safetensors" -> "fp16"; "model.safetensors" -> None."""
    parts = path.name.removesuffix(".safetensors").split(".")
    return parts[-1].split("-")[0] if len(parts) > 1 else None


def check_weights(component_folder: Path, variant: str | None = None, weights_stem: str = "model") -> None:
    """Refuse pickled weights, a missing variant, and safetensors files that are truncated or corrupted, with an error
    naming the file."""
    from safetensors import SafetensorError, safe_open

    all_files = sorted(component_folder.glob("*.safetensors"))
    variants = sorted({weights_variant(path) for path in all_files} - {None})
    safetensors_files = [path for path in all_files if weights_variant(path) == variant]
    if not safetensors_files:
        pickled = sorted(path for path in component_folder.iterdir() if path.suffix in PICKLE_SUFFIXES)
        if pickled:
            raise ValueError(
                f"{pickled[0]} holds pickled weights, which hfdiff never loads (unpickling can run arbitrary code). "
                "If you trust the file, convert it once with diffusers or transformers: load it with "
                "`use_safetensors=False` and `save_pretrained` it, which writes safetensors."
            )
        expected = f"{weights_stem}.{variant}.safetensors" if variant else f"{weights_stem}.safetensors"
        found = f" (it has the variant(s) {variants}: pass variant=... to load one)" if variants else ""
        raise FileNotFoundError(
            f"{component_folder} has no weights: expected {expected}{found}. Save the pipeline again with "
            f"pipe.save_pretrained(path{', variant=' + repr(variant) if variant else ''})."
        )
    for path in safetensors_files:
        try:
            with safe_open(str(path), framework="pt") as weights:
                weights.keys()
        except (SafetensorError, OSError) as error:
            raise ValueError(
                f"{path} is not a readable safetensors file ({error}): it is truncated or corrupted. Download or "
                "save the pipeline again."
            ) from error


REQUIRED_CONFIG = {
    "unet": (
        "architecture",
        ("sample_size", "in_channels", "out_channels", "block_out_channels", "down_block_types", "up_block_types")
        + ("layers_per_block", "context_dim"),
    ),
    "scheduler": (
        "noise schedule",
        ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type", "variance_type"),
    ),
}


def read_json(path: str | os.PathLike) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(
            f"{path} is not valid JSON ({error}): the file is damaged. Save the pipeline again with "
            "pipe.save_pretrained(path), or download it again."
        ) from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} holds {type(value).__name__}, not a JSON object; save the pipeline again.")
    return value


def check_config(component_cls: type, component_folder: Path, name: str) -> None:
    """The component's config file exists, is JSON, has every entry of REQUIRED_CONFIG that its class takes, sizes
    within the class's limits (ContextUNet2DModel.check_config_limits) and no entry the class does not know
    (ContextUNet2DModel.check_config_entries), checked before anything is built."""
    config_path = component_folder / component_cls.config_name
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{config_path} does not exist: the {name!r} component of {component_folder.parent} is incomplete. Save "
            "the pipeline again with pipe.save_pretrained(path)."
        )
    config = read_json(config_path)
    what, keys = REQUIRED_CONFIG[name]
    takes = inspect.signature(component_cls.__init__).parameters
    missing = [key for key in keys if key in takes and key not in config]
    if missing:
        them = "it" if len(missing) == 1 else "them"
        raise ValueError(
            f"{config_path} lacks {', '.join(missing)}: without {them}, {component_cls.__name__}'s defaults would give "
            f"a different {what} from the saved one. Add {them} with the values the model was trained with, or save "
            "the pipeline again with pipe.save_pretrained(path)."
        )
    if hasattr(component_cls, "check_config_limits"):  # sizes that would allocate without bound, refused before
        component_cls.check_config_limits(config, source=str(config_path))
    elif name == "scheduler":  # diffusers' own schedulers (training saves dpm++'s) build T-long tables just the same
        check_scheduler_config_limits(config, source=str(config_path))
    if hasattr(component_cls, "check_config_entries"):  # entries the installed class would silently drop
        component_cls.check_config_entries(config, source=str(config_path))


def from_pretrained(pipeline_cls: type, pretrained_model_name_or_path: str | os.PathLike, kwargs: dict):
    """`pipeline_cls.from_pretrained(pretrained_model_name_or_path, **kwargs)`: the components passed in `kwargs`
    as they are, every other one loaded from the folder (or Hub repo) by `load_component`."""
    expected = pipeline_cls._component_names()
    passed = {name: kwargs.pop(name) for name in expected if name in kwargs}
    options = LoadOptions.from_kwargs(kwargs)
    folder = pipeline_folder(pretrained_model_name_or_path, options)
    index = read_json(folder / "model_index.json")
    components = {
        name: passed[name]
        if name in passed
        else load_component(folder, name, index, options, optional=name in pipeline_cls._optional_components)
        for name in expected
    }
    return pipeline_cls(**components)
