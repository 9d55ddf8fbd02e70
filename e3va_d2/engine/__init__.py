"""Training: the trainers (LazyConfig and yacs), the training step and the launcher."""
from .launch import launch
from .trainer import E3VATrainer, resolve_device
from .yacs_trainer import YacsTrainer

__all__ = ["E3VATrainer", "YacsTrainer", "launch", "resolve_device"]
