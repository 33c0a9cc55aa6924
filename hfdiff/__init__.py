"""hfdiff: small diffusion models (sprites and beyond) trained, sampled and shared on Hugging Face's stack.

`hfdiff.pipelines` (SpriteDiffusionPipeline) is the repository's top-level pipelines/ folder, installed under this
package by setup.cfg: it is the code that travels with every saved model (see pipelines/__init__.py).
"""

import importlib

__version__ = "0.1.0"

# Public names -> the submodule that defines them. Loaded on first use, so `import hfdiff` (and `hfdiff.data`, which
# needs only numpy) stays fast and does not import diffusers until a model, scheduler or pipeline is asked for.
_LAZY_EXPORTS = {
    "SPRITE_CLASSES": "hfdiff.data",
    "ContextUNet2DModel": "hfdiff.models",
    "SpriteDDPMScheduler": "hfdiff.schedulers",
    "SpriteDDIMScheduler": "hfdiff.schedulers",
    "SpriteDiffusionPipeline": "hfdiff.pipelines",
    "TrajectoryRecorder": "hfdiff.pipelines",
}

__all__ = list(_LAZY_EXPORTS)


def __getattr__(name: str):
    if name not in _LAZY_EXPORTS:
        raise AttributeError(f"module 'hfdiff' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__():
    return sorted([*globals(), *__all__])
