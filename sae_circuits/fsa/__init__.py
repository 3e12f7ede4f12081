"""Finite-state-automaton circuits: states and transitions that features form over a corpus
(extract.py), causal checks (validate.py), ground-truth scores (score.py), file formats (export.py)."""

from sae_circuits.fsa.automaton import FeatureAutomaton, State, Transition
from sae_circuits.fsa.extract import automaton
from sae_circuits.fsa.score import AutomatonScore, auroc, score_automaton

__all__ = [
    "AutomatonScore",
    "FeatureAutomaton",
    "State",
    "Transition",
    "auroc",
    "automaton",
    "score_automaton",
]
