"""Training: one Accelerate loop (`train`) and its config (`TrainingConfig`), shared by both training scripts."""

from .config import TrainingConfig, parse_config, resolve_defaults
from .data import TrainingData, load_training_data
from .loop import NonFiniteLossError, TrainingResult, train
from .process_state import configure_script_logging

__all__ = [
    "NonFiniteLossError",
    "TrainingConfig",
    "TrainingData",
    "TrainingResult",
    "configure_script_logging",
    "load_training_data",
    "parse_config",
    "resolve_defaults",
    "train",
]
