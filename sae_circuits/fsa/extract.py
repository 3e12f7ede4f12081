"""``sc.automaton``: the finite-state automaton that a model's features form over a corpus.

1. **Activations** of every spliced dictionary on every text (sparse; text tokens only).
2. **Candidates**: features firing on between ``min_frequency`` and ``max_frequency`` of the
   tokens, most frequent first (at most ``8 * max_states``).
3. **States are roles** (``roles.py``): candidates that fire on the same tokens — one role at
   several layers, near-duplicates within a layer — are grouped by average-linkage clustering of
   their firing sets (Jaccard ≥ ``group_threshold``); a group fires where at least half of its
   members fire. ``grouping=False`` keeps one feature per state. The ``max_states`` most frequent
   states are kept.
4. **Transitions**, both in [0, 1] and kept when ≥ ``min_weight`` (the full weight matrices are
   kept too, for scoring):

   - ``token`` (the dictionary-learning paper's mechanism: A makes the model emit a token on which
     B fires): ``w(A -> B) = Σ_x q_A(x) P(B | A, x)``. ``q_A`` is measured on the model
     (``effects.py``): the tokens whose next-token probability A's features raise when set to
     their pin values where A is off (sufficiency, the default), or taken off where A fires
     (necessity), or both (geometric mean), normalised over tokens: what A itself makes the model
     say, not what the model says where A happens to fire. ``P(B | A, x)`` is the separable corpus term: how
     often B fires on token ``x`` right after A fired (``P(B | x)`` when ``x`` never follows A).
   - ``attention`` (inside one forward pass): on ``attention_contexts`` texts, active members of
     states at t+1 (a fixed random sample of at most 128 per text) get their attribution rows
     (direct effects in the frozen replacement model, ``graph/attribution.py``); ``w(A -> B)`` is
     the share of B's input mass at t+1 that comes, positively, from A's members at t.

   Each transition is labelled by the tokens at t+1 where A fired at t and B at t+1.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Bool, Int
from torch import Tensor, nn

from sae_circuits._model import check_model
from sae_circuits._shard_map import map_items
from sae_circuits._tokenize import resolve_bos, token_row, token_text
from sae_circuits.fsa.automaton import FeatureAutomaton, State, Transition
from sae_circuits.fsa.effects import EffectKind, frozen_inputs, promoted_tokens
from sae_circuits.fsa.roles import average_linkage, coherence, jaccard, majority
from sae_circuits.graph.attribution import direct_effects
from sae_circuits.graph.replacement import stage_of
from sae_circuits.graph.targets import Feature
from sae_circuits.positions import check_seed, is_int
from sae_circuits.splice import saes_of

_ROWS_PER_TEXT = 128  # attention transitions: state occurrences given an attribution row, per text
PIN_QUANTILE = 0.9
"""A member's pin value is this quantile of its activations where it fires (``State.pin_values``)."""


class _Corpus:
    """Texts as token rows and the sparse feature activations of every spliced site on them."""

    def __init__(self, model: Any, texts: Any, prepend_bos: bool | None, progress: bool) -> None:
        self.model = model
        self.rows, self.offset = _tokenize(model, texts, prepend_bos)  # offset: BOS tokens to skip
        self.lengths = torch.tensor([len(r) - self.offset for r in self.rows])
        self.tokens = torch.cat([r[self.offset :] for r in self.rows])  # text tokens, concatenated
        saes = saes_of(model)
        self.sites = sorted(saes, key=stage_of)
        self.saes = [saes[s] for s in self.sites]
        self.vocab = torch.unique(self.tokens)
        token_ids, feature_ids, values, probs = [], [], [], []
        start = 0
        with torch.no_grad():  # one text per item: shared out over ranks when sharded (_shard_map)
            per_text = map_items(self._activations, self.rows, "activations", progress)
        for row, (text_probs, sparse) in zip(self.rows, per_text):
            probs.append(text_probs)
            for pos, idx, acts in sparse:
                token_ids.append(pos + start)
                feature_ids.append(idx)
                values.append(acts)
            start += row.numel() - self.offset
        # the sparse activations and probabilities live on the CPU, whatever the model's device
        self.token_ids, self.feature_ids, self.values = (
            torch.cat(token_ids).cpu(),
            torch.cat(feature_ids).cpu(),
            torch.cat(values).cpu(),
        )
        self.next_probs = torch.cat(probs).cpu()  # (tokens, vocab): the model's next-token probabilities

    def _activations(self, row: Tensor) -> tuple[Tensor, list[tuple[Tensor, Tensor, Tensor]]]:
        """One text's next-token probabilities (corpus vocabulary) and, per site, its sparse
        activations: (text position, global feature id, value), on the CPU."""
        names = {f"{s}.hook_sae_acts_post": i for i, s in enumerate(self.sites)}
        logits, cache = self.model.run_with_cache(row.unsqueeze(0), names_filter=lambda n: n in names)
        probs = logits[0, self.offset :].double().softmax(-1)[:, self.vocab.to(logits.device)]
        sparse = []
        for name, site in names.items():
            acts = cache[name][0, self.offset :].float()
            pos, idx = acts.nonzero(as_tuple=True)
            sparse.append((pos.cpu(), (idx + self.feature_offset(site)).cpu(), acts[pos, idx].cpu()))
        return probs.cpu(), sparse

    def values_of(self, feature: int) -> Tensor:
        """The activations of one (global) feature where it fires."""
        if not hasattr(self, "_by_feature"):
            order = self.feature_ids.argsort(stable=True)
            self._by_feature = order
            self._feature_starts = torch.searchsorted(
                self.feature_ids[order], torch.arange(self.n_features + 1, device=self.feature_ids.device)
            )
        lo, hi = int(self._feature_starts[feature]), int(self._feature_starts[feature + 1])
        return self.values[self._by_feature[lo:hi]]

    def feature_offset(self, site: int) -> int:
        """The global id of feature 0 of site number ``site`` (sites' features are numbered in a row)."""
        return sum(s.cfg.d_sae for s in self.saes[:site])

    def feature_of(self, global_id: int) -> tuple[int, int]:
        """(site number, index) of a global feature id."""
        for site, sae in enumerate(self.saes):
            if global_id < sae.cfg.d_sae:
                return site, global_id
            global_id -= sae.cfg.d_sae
        raise IndexError(global_id)

    @property
    def n_features(self) -> int:
        """Features of every spliced site together (the number of global feature ids)."""
        return self.feature_offset(len(self.saes))

    def firing(self, features: Int[Tensor, " c"]) -> Bool[Tensor, "tokens c"]:
        """Whether each of ``features`` (global ids) is active on each corpus token."""
        column = torch.full((self.n_features,), -1, dtype=torch.long)
        column[features] = torch.arange(features.numel())
        keep = column[self.feature_ids] >= 0
        out = torch.zeros(int(self.lengths.sum()), features.numel(), dtype=torch.bool)
        out[self.token_ids[keep], column[self.feature_ids[keep]]] = True
        return out

    def next_mask(self) -> Bool[Tensor, " tokens"]:
        """Tokens that have a next token in the same text."""
        last = torch.zeros(int(self.lengths.sum()), dtype=torch.bool)
        last[self.lengths.cumsum(0) - 1] = True
        return ~last


def _tokenize(model: Any, texts: Any, prepend_bos: bool | None) -> tuple[list[Tensor], int]:
    if isinstance(texts, str) or not isinstance(texts, (Sequence, Tensor)) or len(texts) == 0:
        raise ValueError(
            f"texts must be a non-empty list of strings or token rows, got {type(texts).__name__}"
        )
    if isinstance(texts, Tensor) and texts.ndim != 2:  # a 1-D row would become one text per token
        raise ValueError(
            f"texts as a tensor must be [n_texts, tokens] token ids, got shape {list(texts.shape)}"
        )
    n_ctx, n_vocab = model.cfg.n_ctx, model.cfg.d_vocab
    rows: list[Tensor] = []
    bos = resolve_bos(model, prepend_bos)  # token rows are "without BOS": they get it as texts do
    for i, text in enumerate(texts):
        if isinstance(text, str):
            if not text:
                raise ValueError(f"text {i} is empty")
            row = token_row(model, text, bos=bos)
        else:
            try:
                row = torch.as_tensor(text)
            except (TypeError, ValueError, RuntimeError):
                raise ValueError(
                    f"text {i} is {text!r:.60}: expected a string or a row of token ids"
                ) from None
            if row.ndim != 1 or row.dtype == torch.bool or row.is_floating_point() or row.is_complex():
                raise ValueError(
                    f"text {i}: expected a string or a 1-D row of integer token ids, got "
                    f"{row.dtype} of shape {list(row.shape)}"
                )
            if row.numel() == 0:
                raise ValueError(f"text {i} is empty")
            if int(row.min()) < 0 or int(row.max()) >= n_vocab:
                raise ValueError(
                    f"text {i}: token ids must lie in [0, {n_vocab}), "
                    f"got [{int(row.min())}, {int(row.max())}]"
                )
            try:
                row = token_row(model, row, bos=bos, ids="like_text")
            except ValueError as err:
                raise ValueError(f"text {i}: {err}") from None
        if row.numel() > n_ctx:
            raise ValueError(f"text {i} has {row.numel()} tokens, more than the model's context of {n_ctx}")
        rows.append(row.to(next(model.parameters()).device))
    return rows, int(bos)


def automaton(
    model: nn.Module,
    texts: Sequence[str] | Sequence[Sequence[int]] | Int[Tensor, "texts pos"],
    *,
    max_states: int = 256,
    min_weight: float = 0.1,
    min_frequency: float = 0.002,
    max_frequency: float = 0.5,
    grouping: bool = True,
    group_threshold: float = 0.6,
    attention_contexts: int = 8,
    effect: EffectKind = "pin",
    exclusive: bool = True,
    effect_contexts: int = 32,
    effect_positions: int = 32,
    prepend_bos: bool | None = None,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
) -> FeatureAutomaton:
    """The automaton the spliced features form over ``texts`` (see the module docstring).

    Args:
        model: a ``HookedTransformer`` or ``TransformerBridge`` with SAEs and/or transcoders spliced.
        texts: strings, or token rows (without BOS; one is prepended if ``prepend_bos``).
        max_states: most states kept (the most frequent).
        min_weight: transitions weaker than this are dropped (both mechanisms are in [0, 1]).
        min_frequency, max_frequency: firing-rate window of candidate features.
        grouping: states are roles, groups of features that fire on the same tokens (``roles.py``);
            ``False`` keeps one feature per state.
        group_threshold: mean Jaccard overlap of firing sets within a group.
        attention_contexts: texts used for attention-mediated transitions (0 turns them off).
        effect: how a state's effect on the next token is measured (``effects.py``): ``"pin"``
            (the default: its members set to their pin values where it does not fire),
            ``"remove"`` (taken off where it fires) or ``"both"`` (tokens that both raise: the
            geometric mean).
        exclusive: when pinning, also set the *other* states' members active where the state is
            pinned to 0, so the position's automaton state is replaced rather than added to;
            ``False`` adds the pinned state on top (``effects.py``).
        effect_contexts, effect_positions: texts, and positions per state in them, on which each
            state's effect on the next token is measured.
        prepend_bos: prepend BOS to each text (None: the model's default); BOS is never scored.
        batch_size: attribution rows per backward pass.
        seed: fixes the positions sampled for effects and attention rows.
        progress: show progress bars.

    >>> with sc.spliced(model, saes):
    ...     fsa = sc.automaton(model, texts[:4], max_states=8, attention_contexts=1,
    ...                        effect_contexts=2, effect_positions=4)
    >>> len(fsa.states), fsa.metadata["n_tokens"], sorted(fsa.weights)
    (8, 192, ['attention', 'token'])
    >>> fsa.state(0).members[0][0]   # (site, feature index) of a member
    'blocks.2.hook_resid_post'
    """
    check_model(model)
    if not saes_of(model):
        raise ValueError("no SAE or transcoder is spliced into the model; splice some first (sc.splice)")
    for name, value, low in (
        ("max_states", max_states, 1),
        ("attention_contexts", attention_contexts, 0),
        ("effect_contexts", effect_contexts, 1),
        ("effect_positions", effect_positions, 1),
        ("batch_size", batch_size, 1),
    ):
        if not is_int(value) or value < low:
            raise ValueError(f"{name}={value!r} must be an integer >= {low}")
    check_seed(seed)  # the random streams are derived from it by arithmetic on 64-bit integers
    for name, number in (("min_weight", min_weight), ("group_threshold", group_threshold)):
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not 0 <= number <= 1:
            raise ValueError(f"{name}={number!r} must be a number in [0, 1]")
    for name, number in (("min_frequency", min_frequency), ("max_frequency", max_frequency)):
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise ValueError(f"{name}={number!r} must be a number in [0, 1]")
    for name, flag in (("prepend_bos", prepend_bos), ("grouping", grouping), ("progress", progress)):
        if not isinstance(flag, bool) and not (name == "prepend_bos" and flag is None):  # "no" reads as True
            raise TypeError(
                f"{name}={flag!r} must be True or False" + (" (or None)" if name == "prepend_bos" else "")
            )
    if not 0 <= min_frequency < max_frequency <= 1:
        raise ValueError(
            f"need 0 <= min_frequency < max_frequency <= 1, got {min_frequency}, {max_frequency}"
        )
    if effect not in ("both", "remove", "pin"):
        raise ValueError(f"effect={effect!r}: expected 'both', 'remove' or 'pin'")
    if not isinstance(exclusive, bool):  # as check_pairs refuses its own ``exclusive``
        raise TypeError(f"exclusive={exclusive!r} must be True or False")
    frozen_inputs(model)  # refuse a model without the hook points the token effects patch, early

    corpus = _Corpus(model, texts, prepend_bos, progress)
    n_tokens = int(corpus.lengths.sum())
    counts = torch.bincount(corpus.feature_ids, minlength=corpus.n_features).double()
    rate = counts / max(n_tokens, 1)
    window = ((rate >= min_frequency) & (rate <= max_frequency)).nonzero().squeeze(-1)
    candidates = window[rate[window].argsort(descending=True, stable=True)][: 8 * max_states]
    if candidates.numel() == 0:
        raise ValueError(
            f"no feature fires on between {min_frequency:.2%} and {max_frequency:.0%} "
            f"of the {n_tokens} tokens"
        )
    fire = corpus.firing(candidates)
    if grouping:
        groups = average_linkage(jaccard(fire), group_threshold)
        state_fire = majority(fire, groups)
    else:
        groups, state_fire = [[i] for i in range(candidates.numel())], fire
    order = state_fire.sum(0).argsort(descending=True, stable=True)[:max_states].tolist()  # the most frequent
    groups, state_fire = [groups[i] for i in order], state_fire[:, order]
    members = [[int(candidates[j]) for j in g] for g in groups]  # global feature ids

    states = [
        _state(corpus, i, m, state_fire[:, i], coherence(fire, g, state_fire[:, i]))
        for i, (m, g) in enumerate(zip(members, groups))
    ]
    pins = {m: v for state, group in zip(states, members) for m, v in zip(group, state.pin_values)}
    effects = promoted_tokens(
        corpus, members, state_fire, pins, how=effect, contexts=effect_contexts, per_state=effect_positions,
        seed=seed, progress=progress, exclusive=exclusive,
    )  # fmt: skip
    weights = {"token": _token_weights(corpus, state_fire, effects)}
    if attention_contexts:
        weights["attention"] = _attention_weights(
            corpus, members, attention_contexts, batch_size, seed, progress
        )
    transitions = [
        Transition(a, b, mechanism, float(w[a, b]))  # type: ignore[arg-type]
        for mechanism, w in weights.items()
        for a, b in (w >= max(min_weight, 1e-12)).nonzero().tolist()
    ]
    _label_tokens(corpus, transitions, state_fire)
    return FeatureAutomaton(
        states=states, transitions=transitions, firing=state_fire, lengths=corpus.lengths, weights=weights,
        tokens=corpus.tokens.cpu(),
        metadata={
            "sites": corpus.sites, "n_texts": len(corpus.rows), "n_tokens": n_tokens,
            "max_states": max_states, "min_weight": min_weight, "min_frequency": min_frequency,
            "max_frequency": max_frequency, "grouping": grouping, "group_threshold": group_threshold,
            "attention_contexts": attention_contexts, "effect": effect, "exclusive": exclusive,
            "effect_contexts": effect_contexts, "effect_positions": effect_positions, "seed": seed,
            "n_candidates": int(candidates.numel()), "prepend_bos": bool(corpus.offset),
        },
    )  # fmt: skip


def _state(corpus: _Corpus, state_id: int, members: list[int], fires: Tensor, agreement: float) -> State:
    model = corpus.model
    top = Counter(corpus.tokens[fires].tolist()).most_common(3)
    label = " ".join(repr(token_text(model, t)) for t, _ in top)
    sites, pins, largest = [], [], 0.0
    for m in members:
        site, index = corpus.feature_of(m)
        sites.append((corpus.sites[site], index))
        values = corpus.values_of(m)
        pins.append(float(values.quantile(PIN_QUANTILE)) if values.numel() else 0.0)
        largest = max(largest, float(values.max()) if values.numel() else 0.0)
    return State(
        id=state_id,
        members=sites,
        label=label,
        frequency=float(fires.float().mean()),
        max_activation=largest,
        pin_values=pins,
        coherence=agreement,
    )


def _token_weights(corpus: _Corpus, fire: Tensor, effects: Tensor) -> Tensor:
    """``w(A -> B) = Σ_x q_A(x) P(B fires at t+1 | A at t, token x at t+1)``.

    ``q_A`` is A's measured promotion of each next token (``effects.promoted_tokens``), normalised
    over tokens; the conditional is the corpus term, counted on the model's own
    activations, falling back to ``P(B | x)`` for a token that never follows A in the corpus."""
    token_col = torch.searchsorted(corpus.vocab, corpus.tokens)
    occurrences = torch.bincount(token_col, minlength=corpus.vocab.numel()).double()
    fires_on = torch.zeros(corpus.vocab.numel(), fire.shape[1], dtype=torch.float64).index_add_(
        0, token_col, fire.double()
    )
    p_fire = fires_on / occurrences.clamp_min(1)[:, None]  # (vocab, states): P(B | x)
    promoted = effects.double().clamp_min(0)
    q = promoted / promoted.sum(1, keepdim=True).clamp_min(1e-12)  # (states, vocab): q_A(x)
    f = fire.double()
    weights = torch.zeros(fire.shape[1], fire.shape[1], dtype=torch.float64)
    nxt = corpus.next_mask().nonzero().squeeze(-1)
    next_col = token_col[nxt + 1]
    now, then = f[nxt], f[nxt + 1]
    seen = torch.zeros(fire.shape[1], corpus.vocab.numel(), dtype=torch.bool)
    for x in next_col.unique().tolist():
        at = next_col == x
        a_count = now[at].sum(0)  # (states,): how often x follows A
        together = now[at].T @ then[at]  # (A, B): ... and B fires on it
        known = a_count > 0
        seen[known, x] = True
        weights[known] += q[known, x, None] * together[known] / a_count[known, None]
    unseen = q.masked_fill(seen, 0.0)  # fallback: P(B | x) alone
    return weights + unseen @ p_fire


def _attention_weights(
    corpus: _Corpus, members: list[list[int]], n_contexts: int, batch_size: int, seed: int, progress: bool
) -> Tensor:
    """Share of each state's input at t+1 that comes, positively, from another state at t."""
    model = corpus.model
    state_of = defaultdict(list)  # global feature id -> states it belongs to
    for s, group in enumerate(members):
        for m in group:
            state_of[m].append(s)
    member_ids = torch.tensor(sorted(state_of))
    n_states = len(members)
    inflow = torch.zeros(n_states, n_states, dtype=torch.float64)
    mass = torch.zeros(n_states, dtype=torch.float64)
    starts = torch.cat([torch.zeros(1, dtype=torch.long), corpus.lengths.cumsum(0)])
    generator = torch.Generator().manual_seed(seed)
    plans = []  # (text, targets, their global ids): the sampling, in text order, before any model run
    for text in range(min(n_contexts, len(corpus.rows))):
        lo, hi = int(starts[text]), int(starts[text + 1])
        in_text = (
            (
                (corpus.token_ids >= lo + 1)
                & (corpus.token_ids < hi)
                & torch.isin(corpus.feature_ids, member_ids)
            )
            .nonzero()
            .squeeze(-1)
        )
        if in_text.numel() > _ROWS_PER_TEXT:  # a fixed random sample of the occurrences bounds the cost
            in_text = in_text[torch.randperm(in_text.numel(), generator=generator)[:_ROWS_PER_TEXT]]
        occurrences = []
        for token, feature in zip(corpus.token_ids[in_text].tolist(), corpus.feature_ids[in_text].tolist()):
            site, index = corpus.feature_of(feature)
            occurrences.append((site, token - lo + corpus.offset, index, feature))
        occurrences.sort()  # by site, then position: a backward pass then starts from one site
        targets = [Feature(corpus.sites[site], pos, index) for site, pos, index, _ in occurrences]
        if targets:
            plans.append((text, targets, [feature for *_, feature in occurrences]))
    source_start = torch.tensor([corpus.feature_offset(int(s)) for s in range(len(corpus.sites))])

    def inputs_from_previous(plan: tuple[int, list[Feature], list[int]]) -> tuple[Tensor, ...]:
        """A text's attribution rows, reduced to each row's mass and its positive edges from t-1
        (row, source's global id, weight): all the sums below need, on the CPU."""
        text, targets, _ = plan
        rows = direct_effects(model, corpus.rows[text], targets, batch_size=batch_size)
        source, row, weight = rows.source.cpu(), rows.row.cpu(), rows.weight.cpu()
        source_pos = rows.active_pos.cpu()[source] - corpus.offset  # text position of each source
        target_pos = torch.tensor([t.position - corpus.offset for t in targets])[row]
        previous = (source_pos == target_pos - 1) & (weight > 0)
        source_global = source_start[rows.active_site.cpu()[source]] + rows.active_index.cpu()[source]
        return rows.mass.cpu(), row[previous], source_global[previous], weight[previous]

    # one text per item (shared out over ranks when sharded), summed here in text order
    per_text = map_items(inputs_from_previous, plans, "attention transitions", progress)
    for (_, _, target_ids), (row_mass, row, source, weight) in zip(plans, per_text):
        for r, feature in enumerate(target_ids):
            for b in state_of[feature]:
                mass[b] += float(row_mass[r])
        for r, src, w in zip(row.tolist(), source.tolist(), weight.tolist()):
            for a in state_of.get(src, []):
                for b in state_of[target_ids[r]]:
                    inflow[a, b] += w
    return inflow / mass.clamp_min(1e-12)[None, :]


def _label_tokens(corpus: _Corpus, transitions: list[Transition], fire: Tensor, top: int = 5) -> None:
    """Tokens at t+1 where src fired at t and dst at t+1, with counts (all pairs at once: for each
    next token x, ``F[t]^T F[t+1]`` over the positions whose next token is x)."""
    if not transitions:
        return
    nxt = corpus.next_mask().nonzero().squeeze(-1)
    token_col = torch.searchsorted(corpus.vocab, corpus.tokens[nxt + 1])
    now, then = fire[nxt].float(), fire[nxt + 1].float()
    src = torch.tensor([t.src for t in transitions])
    dst = torch.tensor([t.dst for t in transitions])
    counts = torch.zeros(len(transitions), corpus.vocab.numel())
    for x in token_col.unique().tolist():
        at = token_col == x
        counts[:, x] = (now[at].T @ then[at])[src, dst]
    # ids that decode alike (the byte tokens that are each U+FFFD) count as one string
    strings = [token_text(corpus.model, int(c)) for c in corpus.vocab]
    position = {x: i for i, x in enumerate(dict.fromkeys(strings))}
    names = list(position)
    column = torch.tensor([position[x] for x in strings]) if len(names) < len(strings) else None
    if column is not None:
        counts = torch.zeros(len(transitions), len(names)).index_add_(1, column, counts)
    best = counts.topk(min(top, counts.shape[1]), dim=1)
    for t, values, columns in zip(transitions, best.values.tolist(), best.indices.tolist()):
        t.tokens = {names[c]: int(v) for v, c in zip(values, columns) if v > 0}
