"""The automaton over a corpus, its model runs shared out over ranks: :func:`sharded_automaton`.

``sc.automaton`` runs the model once per item in four places, and only there (each through
:func:`sae_circuits._shard_map.map_items`):

1. each text's sparse activations and next-token probabilities,
2. each effect text's frozen inputs (embeddings and attention outputs),
3. each chunk of single-position rows of the token effects,
4. each attention text's attribution rows, reduced to the edges from the previous position.

Under :func:`sharded_automaton` rank ``r`` of ``W`` runs the items ``i % W == r`` of each, and
every rank receives every result, in item order. Why gather the items rather than sum statistics
(an ``all_reduce``): the automaton keeps per-token firing and the tokens, a pin value is a quantile
of a feature's activations (not a sum), and a float sum in another order is not the same float.
Gathered, every rank then runs the rest (candidates, clustering, weights, labels) on exactly the
values one process would have had, so the automaton is the same, bit for bit, for any number of
ranks; what each rank holds at the end is the whole corpus's sparse activations, as one process would.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from sae_circuits._shard_map import using
from sae_circuits.distributed.ranks import RankMapper, gather, ranks
from sae_circuits.fsa.automaton import FeatureAutomaton
from sae_circuits.fsa.extract import automaton


def sharded_automaton(
    model: Any,
    texts: Sequence[str] | Sequence[Sequence[int]],
    *,
    rank: int | None = None,
    world_size: int | None = None,
    **automaton_kwargs: Any,
) -> FeatureAutomaton:
    """``sc.automaton(model, texts, **automaton_kwargs)`` with its model runs shared out over the
    ranks of the initialised process group; every rank returns the same automaton, equal to the
    one-process result (see the module docstring).

    Args:
        model: a model with dictionaries spliced, the same on every rank.
        texts: the whole corpus, the same on every rank (each rank runs its share of the items).
        rank, world_size: default: the process group's; with more than one rank a process group
            must be initialised (``torchrun`` and ``torch.distributed.init_process_group``).
        automaton_kwargs: passed to :func:`sc.automaton`; progress bars show on rank 0 only.

    With one process it is ``sc.automaton``:

    >>> with sc.spliced(model, saes):
    ...     fsa = sharded_automaton(model, texts[:4], max_states=8, attention_contexts=1,
    ...                             effect_contexts=2, effect_positions=4, progress=False)
    >>> len(fsa.states), fsa.metadata["n_tokens"]
    (8, 192)
    """
    where = ranks(rank, world_size)
    if where.world_size == 1:
        return automaton(model, texts, **automaton_kwargs)
    mapper = RankMapper(where)  # refuses several ranks without a process group
    settings = sorted(
        (k, v) for k, v in automaton_kwargs.items() if k != "progress"
    )  # a bar changes no result
    key = json.dumps([_plain_texts(texts), settings], default=repr)
    everyone = gather(where, hashlib.sha256(key.encode()).hexdigest())
    differ = [r for r, seen in enumerate(everyone) if seen != everyone[0]]
    if differ:
        raise ValueError(
            f"ranks {differ} hold other texts or settings than rank 0: every rank must get the same"
        )
    if where.rank != 0:
        automaton_kwargs["progress"] = False
    with using(mapper):
        return automaton(model, texts, **automaton_kwargs)


def _plain_texts(texts: Any) -> Any:
    """Texts as JSON values, to check that every rank holds the same corpus."""
    if hasattr(texts, "tolist"):
        return texts.tolist()
    return [t if isinstance(t, str) else (t.tolist() if hasattr(t, "tolist") else list(t)) for t in texts]
