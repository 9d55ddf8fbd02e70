"""Training: the trainer, its step and the multi-process launcher."""
from .launch import launch
from .trainer import E3VATrainer, resolve_device

__all__ = ["E3VATrainer", "launch", "resolve_device"]
