"""Work shared out over ranks with ``torch.distributed`` (launched with ``torchrun``), merged so that
the result does not depend on the number of ranks: attribution graphs of many prompts
(:mod:`~sae_circuits.distributed.graphs`), the automaton over a corpus
(:mod:`~sae_circuits.distributed.automata`), and the ranks themselves
(:mod:`~sae_circuits.distributed.ranks`). See ``docs/scale.md``."""

from sae_circuits.distributed.automata import sharded_automaton
from sae_circuits.distributed.graphs import ShardedGraphs, attribute_prompts
from sae_circuits.distributed.ranks import Ranks, process_group_from_env, ranks

__all__ = [
    "Ranks",
    "ShardedGraphs",
    "attribute_prompts",
    "process_group_from_env",
    "ranks",
    "sharded_automaton",
]
