"""The dictionary-learning paper's analyses as tools (guide: ``docs/analyses.md``):

- :mod:`~sae_circuits.analysis.matching` and :mod:`~sae_circuits.analysis.families`: features
  matched across dictionary widths, and the family tree of feature splitting;
- :mod:`~sae_circuits.analysis.universality`: dictionaries of two models compared by activation
  correlation, beside the neuron-to-neuron baseline;
- :mod:`~sae_circuits.analysis.neurons`: each feature's best neuron, and how well each detects a
  known property (precision / recall);
- :mod:`~sae_circuits.analysis.predicates` and :mod:`~sae_circuits.analysis.explain`:
  interpretability scores without an LLM (an explanation is a checkable predicate).

Feature monitors during generation are :func:`sae_circuits.monitor`.
"""

from sae_circuits.analysis._stats import LabelledRows, labelled_rows
from sae_circuits.analysis.explain import (
    ExplanationScore,
    ExplanationScores,
    explain_feature,
    explanation_scores,
    score_explanation,
)
from sae_circuits.analysis.families import FamilyLevel, FeatureFamilies, feature_families
from sae_circuits.analysis.matching import FeatureMatch, match_features
from sae_circuits.analysis.neurons import FeaturesVsNeurons, features_vs_neurons, token_properties
from sae_circuits.analysis.predicates import (
    AutomatonState,
    FromFunction,
    Predicate,
    Regex,
    TokenSet,
    token_rows,
)
from sae_circuits.analysis.universality import Universality, universality

__all__ = [
    "AutomatonState",
    "ExplanationScore",
    "ExplanationScores",
    "FamilyLevel",
    "FeatureFamilies",
    "FeatureMatch",
    "FeaturesVsNeurons",
    "FromFunction",
    "LabelledRows",
    "Predicate",
    "Regex",
    "TokenSet",
    "Universality",
    "explain_feature",
    "explanation_scores",
    "feature_families",
    "features_vs_neurons",
    "labelled_rows",
    "match_features",
    "score_explanation",
    "token_properties",
    "token_rows",
    "universality",
]
