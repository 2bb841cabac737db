"""Training-time code: dataset preparation, the one training loop, evaluation, codec fitting and model cards.

None of it ships in a saved model folder; a folder loads with only the top-level model files.
"""

from .data import WhisperGPTDataCollator, build_processor, prepare_dataset
from .evaluation import evaluate_model
from .loop import (
    TrainingConfig,
    build_optimizer,
    configure_torch,
    latest_checkpoint,
    model_config,
    seconds_per_step,
    train,
)

__all__ = [
    "TrainingConfig",
    "WhisperGPTDataCollator",
    "build_optimizer",
    "build_processor",
    "configure_torch",
    "evaluate_model",
    "latest_checkpoint",
    "model_config",
    "prepare_dataset",
    "seconds_per_step",
    "train",
]
