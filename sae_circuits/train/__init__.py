"""SAE and transcoder training: streamed activations, TopK/BatchTopK/JumpReLU/ReLU recipes."""

from sae_circuits.train.activations import ActivationStore
from sae_circuits.train.config import TrainConfig
from sae_circuits.train.trainer import (
    DictionarySpec,
    SAETrainer,
    train_dictionaries,
    train_sae,
    train_transcoder,
)

__all__ = [
    "ActivationStore",
    "DictionarySpec",
    "SAETrainer",
    "TrainConfig",
    "train_dictionaries",
    "train_sae",
    "train_transcoder",
]
