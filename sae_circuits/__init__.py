"""sae_circuits: splice sparse autoencoders into TransformerLens models, edit their features,
and trace the circuits they form.

The public names are imported lazily (PEP 562), on first use: ``import sae_circuits`` and the
``sae-circuits`` command start without loading torch or TransformerLens."""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the same names, eagerly, for type checkers and IDEs
    from sae_circuits import analysis, architectures, distributed, formats, interventions, writers, zoo
    from sae_circuits._compat import KVCacheNotFilledError, UnsupportedVersionError
    from sae_circuits.analysis import (
        explanation_scores,
        feature_families,
        features_vs_neurons,
        match_features,
        score_explanation,
    )
    from sae_circuits.analysis.universality import universality
    from sae_circuits.baselines import random_like
    from sae_circuits.dashboard import feature_dashboard, write_dashboard
    from sae_circuits.distributed import attribute_prompts, sharded_automaton
    from sae_circuits.evals import EvalResult, evaluate
    from sae_circuits.formats import load_pretrained
    from sae_circuits.fsa import (
        FeatureAutomaton,
        Loop,
        check_pairs,
        probe_states,
        score_automaton,
        score_loops,
    )
    from sae_circuits.fsa.extract import automaton
    from sae_circuits.graph import AttributionGraph, Feature, LogitDirection, attribute
    from sae_circuits.interventions import Intervention, ablate, add, clamp, intervene, noise, scale, steer
    from sae_circuits.io import SAEFormatError
    from sae_circuits.monitor import Monitor, MonitorStopped, load_trace, monitor
    from sae_circuits.placement import place
    from sae_circuits.sae import SAE, SAEConfig
    from sae_circuits.splice import saes_of, splice, spliced, unsplice
    from sae_circuits.train import (
        CachedActivations,
        TrainConfig,
        cache_activations,
        train_distributed,
        train_from_cache,
        train_sae,
        train_transcoder,
    )

__version__ = "0.1.0"

__all__ = [
    "SAE",
    "AttributionGraph",
    "CachedActivations",
    "EvalResult",
    "Feature",
    "FeatureAutomaton",
    "Intervention",
    "KVCacheNotFilledError",
    "LogitDirection",
    "Loop",
    "Monitor",
    "MonitorStopped",
    "SAEConfig",
    "SAEFormatError",
    "TrainConfig",
    "UnsupportedVersionError",
    "ablate",
    "add",
    "analysis",
    "architectures",
    "attribute",
    "attribute_prompts",
    "automaton",
    "cache_activations",
    "check_pairs",
    "clamp",
    "distributed",
    "evaluate",
    "explanation_scores",
    "feature_dashboard",
    "feature_families",
    "features_vs_neurons",
    "formats",
    "intervene",
    "interventions",
    "load_pretrained",
    "load_trace",
    "match_features",
    "monitor",
    "noise",
    "place",
    "probe_states",
    "random_like",
    "saes_of",
    "scale",
    "score_automaton",
    "score_explanation",
    "score_loops",
    "sharded_automaton",
    "splice",
    "spliced",
    "steer",
    "train_distributed",
    "train_from_cache",
    "train_sae",
    "train_transcoder",
    "universality",
    "unsplice",
    "write_dashboard",
    "writers",
    "zoo",
]

# public name -> the module that defines it (a name in _MODULES is that module itself)
_MODULES = ("analysis", "architectures", "distributed", "formats", "interventions", "writers", "zoo")
_SOURCES = {
    "analysis": "sae_circuits.analysis",
    "explanation_scores": "sae_circuits.analysis",
    "feature_families": "sae_circuits.analysis",
    "features_vs_neurons": "sae_circuits.analysis",
    "match_features": "sae_circuits.analysis",
    "score_explanation": "sae_circuits.analysis",
    "universality": "sae_circuits.analysis",
    "Monitor": "sae_circuits.monitor",
    "MonitorStopped": "sae_circuits.monitor",
    "load_trace": "sae_circuits.monitor",
    "monitor": "sae_circuits.monitor",
    "zoo": "sae_circuits.zoo",
    "architectures": "sae_circuits.architectures",
    "formats": "sae_circuits.formats",
    "load_pretrained": "sae_circuits.formats",
    "writers": "sae_circuits.writers",
    "interventions": "sae_circuits.interventions",
    "KVCacheNotFilledError": "sae_circuits._compat",
    "UnsupportedVersionError": "sae_circuits._compat",
    "distributed": "sae_circuits.distributed",
    "attribute_prompts": "sae_circuits.distributed",
    "sharded_automaton": "sae_circuits.distributed",
    "feature_dashboard": "sae_circuits.dashboard",
    "write_dashboard": "sae_circuits.dashboard",
    "EvalResult": "sae_circuits.evals",
    "evaluate": "sae_circuits.evals",
    "FeatureAutomaton": "sae_circuits.fsa",
    "automaton": "sae_circuits.fsa",
    "score_automaton": "sae_circuits.fsa",
    "score_loops": "sae_circuits.fsa",
    "check_pairs": "sae_circuits.fsa",
    "probe_states": "sae_circuits.fsa",
    "Loop": "sae_circuits.fsa",
    "random_like": "sae_circuits.baselines",
    "AttributionGraph": "sae_circuits.graph",
    "Feature": "sae_circuits.graph",
    "LogitDirection": "sae_circuits.graph",
    "attribute": "sae_circuits.graph",
    "Intervention": "sae_circuits.interventions",
    "ablate": "sae_circuits.interventions",
    "add": "sae_circuits.interventions",
    "clamp": "sae_circuits.interventions",
    "intervene": "sae_circuits.interventions",
    "noise": "sae_circuits.interventions",
    "scale": "sae_circuits.interventions",
    "steer": "sae_circuits.interventions",
    "SAEFormatError": "sae_circuits.io",
    "place": "sae_circuits.placement",
    "SAE": "sae_circuits.sae",
    "SAEConfig": "sae_circuits.sae",
    "saes_of": "sae_circuits.splice",
    "splice": "sae_circuits.splice",
    "spliced": "sae_circuits.splice",
    "unsplice": "sae_circuits.splice",
    "TrainConfig": "sae_circuits.train",
    "CachedActivations": "sae_circuits.train",
    "cache_activations": "sae_circuits.train",
    "train_distributed": "sae_circuits.train",
    "train_from_cache": "sae_circuits.train",
    "train_sae": "sae_circuits.train",
    "train_transcoder": "sae_circuits.train",
}


def __getattr__(name: str) -> Any:
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module 'sae_circuits' has no attribute {name!r}")
    module = importlib.import_module(source)
    value = module if name in _MODULES else getattr(module, name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """Importing a submodule binds it on its package: ``sae_circuits.splice`` the module would then hide
    ``sae_circuits.splice`` the function. The function wins, as it did with eager imports."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and name in _SOURCES and name not in _MODULES:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
