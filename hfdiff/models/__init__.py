from .unet_context import UNET_PRESETS, ContextUNet2DModel

__all__ = ["UNET_PRESETS", "ContextUNet2DModel"]
