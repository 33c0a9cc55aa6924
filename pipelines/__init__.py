"""`hfdiff.pipelines`: SpriteDiffusionPipeline and the modules it imports relatively.

This folder stands at the top of the repository, beside `hfdiff/`, and setup.cfg installs it as `hfdiff.pipelines`
(`package_dir`). It is the unit that travels to the Hub as code: `save_pretrained` copies
pipeline_sprite_diffusion.py and its relative imports (image_processing.py, scheduler_steps.py, text_encoding.py)
into every saved folder, so nothing here may import hfdiff at module level, and everything a diffusers-only user runs
is in this one folder. hfdiff's own modules import from it (never the other way round at import time).
"""

from .pipeline_sprite_diffusion import SpriteDiffusionPipeline, TrajectoryRecorder

__all__ = ["SpriteDiffusionPipeline", "TrajectoryRecorder"]
