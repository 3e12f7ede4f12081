"""Finite-state-automaton circuits: states as roles (roles.py) and transitions (effects.py,
extract.py) that features form over a corpus, ranked loops (loops.py), causal checks
(validate.py), ground-truth scores (score.py) and the model's own ceiling for them (probe.py),
file formats (export.py).

The functions ``loops`` and ``validate`` are reached as ``fsa.loops()`` and ``fsa.validate()`` (or
from their modules), so that the submodule names stay the modules."""

from sae_circuits.fsa.automaton import FeatureAutomaton, State, Transition
from sae_circuits.fsa.extract import automaton
from sae_circuits.fsa.loops import Loop
from sae_circuits.fsa.probe import SiteProbe, StateProbe, probe_states
from sae_circuits.fsa.score import AutomatonScore, LoopScore, auroc, score_automaton, score_loops
from sae_circuits.fsa.validate import PairCheck, check_pairs

__all__ = [
    "AutomatonScore",
    "FeatureAutomaton",
    "Loop",
    "LoopScore",
    "PairCheck",
    "SiteProbe",
    "State",
    "StateProbe",
    "Transition",
    "auroc",
    "automaton",
    "check_pairs",
    "probe_states",
    "score_automaton",
    "score_loops",
]
