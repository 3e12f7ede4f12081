"""sae_circuits: splice sparse autoencoders into TransformerLens models, edit their features,
and trace the circuits they form."""

from sae_circuits import zoo
from sae_circuits._compat import KVCacheNotFilledError, UnsupportedVersionError
from sae_circuits.dashboard import feature_dashboard, write_dashboard
from sae_circuits.evals import EvalResult, evaluate
from sae_circuits.fsa import FeatureAutomaton, automaton, score_automaton
from sae_circuits.graph import AttributionGraph, Feature, LogitDirection, attribute
from sae_circuits.interventions import Intervention, ablate, add, clamp, intervene, scale, steer
from sae_circuits.io import SAEFormatError
from sae_circuits.sae import SAE, SAEConfig
from sae_circuits.splice import saes_of, splice, spliced, unsplice
from sae_circuits.train import TrainConfig, train_sae, train_transcoder

__version__ = "0.1.0"

__all__ = [
    "SAE",
    "AttributionGraph",
    "EvalResult",
    "Feature",
    "FeatureAutomaton",
    "Intervention",
    "KVCacheNotFilledError",
    "LogitDirection",
    "SAEConfig",
    "SAEFormatError",
    "TrainConfig",
    "UnsupportedVersionError",
    "ablate",
    "add",
    "attribute",
    "automaton",
    "clamp",
    "evaluate",
    "feature_dashboard",
    "intervene",
    "saes_of",
    "scale",
    "score_automaton",
    "splice",
    "spliced",
    "steer",
    "train_sae",
    "train_transcoder",
    "unsplice",
    "write_dashboard",
    "zoo",
]
