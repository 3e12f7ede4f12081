"""What a state does to the next token: the model's own causal answer, not corpus statistics.

Two interventions, chosen or combined by :func:`promoted_tokens` (``how``): **pin** A where it is
off (every member set to its pin value) and see which tokens it raises (the default), and **remove**
A where it fires (or the geometric mean of both, ``how="both"``). For a state A
(one or more features, possibly at several layers), sample positions where A fires and **remove A
there**: every member m of A that is active at the position has its activation
``a_m`` in the full pass taken off in its spliced dictionary, which then outputs ``x - a_m W_dec[m]``
(exactly, through the splice's edit path). Removing the members' *original* contributions at every
layer, rather than zeroing each at the value it is re-encoded to once earlier members are gone,
takes the whole role out of the residual stream; zeroing underestimates it (a later member weakened
by an earlier removal keeps the rest), and measured so, markup transitions ranked worse (AUROC
0.82 against 0.91). The change in the model's next-token distribution, averaged over the
positions, is A's effect::

    effect_A(x) = E_t [ p(x | t) - p(x | t, A removed at t) ]

Only A's effect *at its own position* is measured — the path through which a state changes the
token the model emits. To isolate it cheaply, every sampled position is run as a sequence of one
token whose attention outputs are frozen at their values in the full text (``blocks.L.hook_attn_out``
and the embeddings ``blocks.0.hook_resid_pre`` are patched in from a cached forward pass): the
residual stream, layer norms, MLPs and dictionaries are recomputed, attention is not. Without the
removal this reproduces the full pass's logits exactly (a test checks it), so thousands of
(state, position) pairs cost one batched forward of single tokens. What a state does through
attention to *later* positions is the other mechanism (``extract.py``, ``attention``).

Pinning is the same pass with the members set to their pin values at positions where A is off,
``effect_A(x) = E_t [ p(x | t, A pinned at t) - p(x | t) ]``, and (``exclusive``, the default) the
members of every *other* state that are active there set to 0: the state the position was in is
taken out and A put in its place, rather than A added on top of it. Only the members active in the
clean pass are zeroed; what the pin itself switches on at later layers, other states' members
included, is A's own downstream effect and is kept. (``validate.check_pairs`` zeroes every member of
the other states; measured here that way, the transition AUROC fell on all seven languages of
``bench_transition_effects.py``, by 0.001-0.031 and on sexpr below random's.) Added on top, A mostly
shifts probability among the tokens the position's own state already makes likely: on markup,
the attribute-value state pinned at a tag's ``>`` (where text or a newline comes next) raised the
newline, which took 52% of its promoted mass against 16% for its own successor ``>``; replaced,
the newline drops out of its first four, ``>`` and the attribute names take 47%, and ``</`` (not a
successor) 37% (``benchmarks/bench_transition_effects.py --example``).

Dictionaries spliced where the pass patches frozen values in (a block's attention, its
``hook_attn_out``, the embeddings) would have their edits overwritten: their features are left out
of the effects, with a warning naming them (:func:`frozen_site`).
"""

from __future__ import annotations

import re
import warnings
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from sae_circuits._shard_map import map_items

_CHUNK = 2048  # single-token rows per forward
EffectKind = Literal["both", "remove", "pin"]


def frozen_site(site: str) -> bool:
    """Whether a dictionary at ``site`` sits where the single-position pass patches in frozen
    values (the embeddings, or anywhere from a block's attention up to its ``hook_attn_out``):
    edits there would be overwritten, so its members cannot enter the token effects."""
    if site in ("hook_embed", "hook_pos_embed", "blocks.0.hook_resid_pre"):
        return True
    # hook_attn_in and hook_{q,k,v}_input (use_attn_in, use_split_qkv_input) feed only the attention
    inside = r"blocks\.\d+\.(attn\.|hook_attn_out$|hook_attn_in$|hook_[qkv]_input$|ln1\.)"
    return re.match(inside, site) is not None


def frozen_inputs(model: Any) -> list[str]:
    """The hook points patched in the single-position pass; refuses a model that lacks one."""
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{i}.hook_attn_out" for i in range(model.cfg.n_layers)]
    missing = [n for n in names if n not in model.hook_dict]
    if missing:
        raise ValueError(
            f"token effects need the hook points {missing[:3]} (embeddings and attention outputs "
            f"per block), which {type(model).__name__} does not have"
        )
    return names


def next_token_effects(
    corpus: Any,
    members: list[list[int]],
    fire: Tensor,
    *,
    contexts: int,
    per_state: int,
    seed: int = 0,
    pins: dict[int, float] | None = None,
    cached: dict[str, Tensor] | None = None,
    progress: bool = False,
    exclusive: bool = True,
) -> Float[Tensor, "states vocab"]:
    """``effect_A(x)`` (see the module docstring) for every state, over the corpus vocabulary.

    ``corpus`` is ``extract._Corpus``; ``members[s]`` the global feature ids of state ``s``;
    ``fire`` its firing (tokens x states). Positions come from the first ``contexts`` texts, at
    most ``per_state`` per state (a fixed random sample). A state that never fires there has no
    measured effect (a zero row). With ``pins`` (global feature id -> value), the state is pinned
    instead, at positions where it does *not* fire, and the effect is pinned minus clean; with
    ``exclusive`` every other state's members active there are also set to 0 (the position's state is
    replaced by A rather than A added to it).
    """
    model = corpus.model
    names = frozen_inputs(model)
    n_texts = min(contexts, len(corpus.rows))
    n_tok = int(corpus.lengths[:n_texts].sum())
    if cached is None:  # the frozen inputs of the first n_texts texts (``promoted_tokens`` shares them)
        cached = _cache(model, corpus, names, n_texts)
    generator = torch.Generator().manual_seed(seed)
    in_subset = corpus.token_ids < n_tok
    order = corpus.token_ids[in_subset].argsort(stable=True)  # the sparse activations by position
    token_ids = corpus.token_ids[in_subset][order]
    feature_ids = corpus.feature_ids[in_subset][order]
    values = corpus.values[in_subset][order]
    starts = torch.searchsorted(
        token_ids, torch.arange(n_tok + 1)
    )  # entries of position t: starts[t]:starts[t+1]
    offsets = torch.tensor([corpus.feature_offset(s) for s in range(len(corpus.sites) + 1)])
    member = torch.zeros(corpus.n_features, dtype=torch.bool)
    skipped = [site for site in corpus.sites if frozen_site(site)]
    if skipped:
        warnings.warn(
            f"token effects leave out the features of the dictionaries at {skipped}: the single-position "
            "pass freezes the embeddings and attention outputs, so edits there would be overwritten; "
            "states made only of them get no token transitions (their attention transitions remain), and "
            "they are not zeroed where another state is pinned exclusively",
            stacklevel=3,
        )
        for k, site in enumerate(corpus.sites):
            if site in skipped:
                member_of_site = torch.zeros(corpus.n_features, dtype=torch.bool)
                member_of_site[offsets[k] : offsets[k + 1]] = True
                members = [[f for f in group if not member_of_site[f]] for group in members]

    in_a_state = torch.zeros(corpus.n_features, dtype=torch.bool)  # members of any state
    for group in members:
        in_a_state[group] = True
    row_pos: list[int] = []  # the corpus position of each single-token row
    row_state: list[int] = []  # the state removed (or pinned) in it
    zero_rows: list[Tensor] = []  # (row, feature, value) of every member activation taken off
    zero_features: list[Tensor] = []
    zero_values: list[Tensor] = []
    for s, group in enumerate(members):
        positions = (~fire[:n_tok, s] if pins is not None else fire[:n_tok, s]).nonzero().squeeze(-1)
        if positions.numel() > per_state:
            positions = positions[torch.randperm(positions.numel(), generator=generator)[:per_state]]
        if positions.numel() == 0 or not group:
            continue
        first = len(row_pos)
        counts = starts[positions + 1] - starts[positions]
        entries = torch.repeat_interleave(
            starts[positions] - counts.cumsum(0) + counts, counts
        ) + torch.arange(int(counts.sum()))  # the sparse entries at the sampled positions
        rows = torch.repeat_interleave(torch.arange(positions.numel()), counts)
        member[group] = True
        active = member[feature_ids[entries]]
        member[group] = False
        if pins is not None and exclusive:  # the states the position is in are set to 0 where A is pinned
            others = in_a_state[feature_ids[entries]] & ~active
            zero_rows.append(rows[others] + first)
            zero_features.append(feature_ids[entries[others]])
            zero_values.append(torch.zeros(int(others.sum())))
        rows, entries = rows[active], entries[active]
        if pins is None:
            zero_rows.append(rows + first)
            zero_features.append(feature_ids[entries])
            zero_values.append(values[entries])
        else:  # every member set to its pin value, whatever it is re-encoded to
            zero_rows.append(torch.arange(positions.numel()).repeat_interleave(len(group)) + first)
            zero_features.append(torch.tensor(group, dtype=torch.long).repeat(positions.numel()))
            zero_values.append(torch.tensor([pins[f] for f in group]).repeat(positions.numel()))
        row_pos += positions.tolist()
        row_state += [s] * positions.numel()
    effects = torch.zeros(len(members), corpus.vocab.numel(), dtype=torch.float64)
    if not row_pos:
        return effects
    rows, states = torch.tensor(row_pos), torch.tensor(row_state)
    zero_r, zero_f, zero_v = torch.cat(zero_rows), torch.cat(zero_features), torch.cat(zero_values)
    site_of = torch.bucketize(zero_f, offsets, right=True) - 1

    def chunk_probs(start: int) -> Tensor:
        in_chunk = (zero_r >= start) & (zero_r < start + _CHUNK)
        edits = {
            f"{site}.hook_sae_acts_post": (
                zero_r[in_chunk & (site_of == k)] - start,
                zero_f[in_chunk & (site_of == k)] - offsets[k],
                zero_v[in_chunk & (site_of == k)],
            )
            for k, site in enumerate(corpus.sites)
        }
        chunk = rows[start : start + _CHUNK]
        return _single_positions(model, corpus, cached, chunk, names, edits, pins is not None)

    # one chunk per item: shared out over ranks when sharded (_shard_map)
    ablated = torch.cat(map_items(chunk_probs, range(0, rows.numel(), _CHUNK), "token effects", progress))
    diff = corpus.next_probs[rows] - ablated
    if pins is not None:
        diff = -diff
    counts = torch.bincount(states, minlength=len(members)).clamp_min(1).double()
    return effects.index_add_(0, states, diff) / counts[:, None]


def _cache(model: Any, corpus: Any, names: list[str], n_texts: int) -> dict[str, Tensor]:
    """The frozen inputs at every text position of the first ``n_texts`` texts, concatenated."""

    def frozen(row: Tensor) -> list[Tensor]:
        _, cache = model.run_with_cache(row.unsqueeze(0), names_filter=lambda n: n in names)
        return [cache[n][0, corpus.offset :] for n in names]

    with torch.no_grad():  # one text per item: shared out over ranks when sharded (_shard_map)
        per_text = map_items(frozen, corpus.rows[:n_texts])
    return {n: torch.cat([values[i] for values in per_text]) for i, n in enumerate(names)}


def _single_positions(
    model: Any,
    corpus: Any,
    cached: dict[str, Tensor],
    positions: Tensor,
    names: list[str],
    edits: dict[str, tuple[Tensor, Tensor, Tensor]],
    assign: bool = False,
) -> Float[Tensor, "rows vocab"]:
    """Next-token probabilities (corpus vocabulary) of each position run alone, its frozen inputs
    patched in, with ``values`` taken off the ``(rows, features)`` of ``edits`` at each dictionary
    (the splice then subtracts ``value * W_dec[feature]`` from its output), or, with ``assign``,
    those activations set to ``values``."""

    def patch(name: str):
        values = cached[name][positions].unsqueeze(1)
        return lambda activation, hook: values.to(activation.device, activation.dtype)  # cached on the CPU

    def remove(rows: Tensor, features: Tensor, values: Tensor):
        def hook(activation: Tensor, hook: Any) -> Tensor:
            out = activation.clone()
            edited = values.to(out.device, out.dtype)  # the edits are built on the CPU
            out.view(positions.numel(), -1).index_put_(
                (rows.to(out.device), features.to(out.device)), edited if assign else -edited,
                accumulate=not assign,
            )  # fmt: skip
            return out

        return hook

    hooks = [(n, patch(n)) for n in names]
    hooks += [(n, remove(r, f, v)) for n, (r, f, v) in edits.items() if r.numel()]
    tokens = corpus.tokens[positions].unsqueeze(1).to(corpus.rows[0].device)
    with torch.no_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
    return logits[:, -1].double().softmax(-1)[:, corpus.vocab].cpu()


def promoted_tokens(
    corpus: Any,
    members: list[list[int]],
    fire: Tensor,
    pins: dict[int, float],
    *,
    how: EffectKind = "pin",
    contexts: int,
    per_state: int,
    seed: int = 0,
    progress: bool = False,
    exclusive: bool = True,
) -> Float[Tensor, "states vocab"]:
    """How much each state raises each next token (not normalised; 0 where it lowers it).

    ``remove``: the positive part of :func:`next_token_effects` (what the state's presence adds).
    ``pin``: the same with the members set to ``pins`` where the state is off and, with
    ``exclusive`` (the default), the other states' active members set to 0 there (what putting
    the position in this state does). ``both``: the geometric mean of the two, each first
    normalised over tokens — a token counts when the state is both necessary and sufficient for
    it. Removal alone leaks corpus statistics: taking *any* large part of the residual stream
    away, a random direction's included, lowers the token the model was about to predict; a
    pinned random direction promotes nothing in particular. Measured on kvlog, random dictionaries
    rank the true transitions at AUROC 0.93 by removal, 0.46-0.58 by exclusive pinning, 0.80 by
    both (docs/automata.md). ``pin`` is the default: ``both`` also zeroes a token the *context*
    chooses after A (a path segment is followed by ``/``, ``.``, ``?``, ``#`` or a newline:
    removing the segment's features lowers only ``.``). Over ten languages' builds and corpus
    seeds, exclusive pinning ranked the true transitions higher than pinning on top on 21 of 35,
    equal on one, lower on url's four and asm's, recipe's and chemeq's three (by up to 0.061); the
    three languages designed blind after the choice (asm, recipe, chemeq) all read higher on top
    (docs/automata.md, "Method", item 4).
    """
    if how not in ("both", "remove", "pin"):
        raise ValueError(f"how={how!r}: expected 'both', 'remove' or 'pin'")

    cached = _cache(corpus.model, corpus, frozen_inputs(corpus.model), min(contexts, len(corpus.rows)))

    def measure(with_pins: dict[int, float] | None) -> Tensor:
        return next_token_effects(
            corpus, members, fire, contexts=contexts, per_state=per_state, seed=seed, pins=with_pins,
            cached=cached, progress=progress, exclusive=exclusive,
        ).clamp_min(0)  # fmt: skip

    removed = measure(None) if how != "pin" else None
    pinned = measure(pins) if how != "remove" else None
    if removed is None:
        assert pinned is not None
        return pinned
    if pinned is None:
        return removed
    a = removed / removed.sum(1, keepdim=True).clamp_min(1e-12)
    b = pinned / pinned.sum(1, keepdim=True).clamp_min(1e-12)
    return (a * b).sqrt()
