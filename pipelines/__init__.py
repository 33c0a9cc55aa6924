from .pipeline_sprite_diffusion import SpriteDiffusionPipeline, TrajectoryRecorder

__all__ = ["SpriteDiffusionPipeline", "TrajectoryRecorder"]
