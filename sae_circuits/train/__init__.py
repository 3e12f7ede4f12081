"""SAE and transcoder training: streamed or cached activations, TopK/BatchTopK/JumpReLU/ReLU
recipes, data parallel over processes (:mod:`sae_circuits.train.distributed`)."""

from sae_circuits.train.activation_cache import (
    CachedActivations,
    CacheManifest,
    Fingerprint,
    cache_activations,
    read_manifest,
)
from sae_circuits.train.activations import ActivationSource, ActivationStore
from sae_circuits.train.config import TrainConfig
from sae_circuits.train.distributed import train_distributed
from sae_circuits.train.trainer import (
    DictionarySpec,
    SAETrainer,
    train_dictionaries,
    train_from_cache,
    train_sae,
    train_transcoder,
)

__all__ = [
    "ActivationSource",
    "ActivationStore",
    "CacheManifest",
    "CachedActivations",
    "DictionarySpec",
    "Fingerprint",
    "SAETrainer",
    "TrainConfig",
    "cache_activations",
    "read_manifest",
    "train_dictionaries",
    "train_distributed",
    "train_from_cache",
    "train_sae",
    "train_transcoder",
]
