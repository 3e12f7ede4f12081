"""States as roles (clustering against brute force), token effects (the single-position pass
against full forward passes), ranked loops (chance-corrected strength, the Markov check against
mixed states, distinctness, self-loops after structural loops, variants after distinct loops) and
loop scores against ground truth."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

import sae_circuits as sc
from sae_circuits.fsa import FeatureAutomaton, State, Transition, effects, extract, score_loops
from sae_circuits.fsa import loops as loops_module
from sae_circuits.fsa.loops import VARIANT, lifts, loops, markov_consistency, strengths
from sae_circuits.fsa.roles import average_linkage, coherence, jaccard, majority
from sae_circuits.languages import automata

# --------------------------------------------------------------------------- roles


def _brute_average_linkage(sim: torch.Tensor, threshold: float) -> set[frozenset[int]]:
    """Average linkage by definition: recompute every cluster pair's mean similarity each step."""
    clusters = [[i] for i in range(sim.shape[0])]
    while len(clusters) > 1:
        best, pair = -1.0, None
        for (i, a), (j, b) in itertools.combinations(enumerate(clusters), 2):
            mean = float(sim[a][:, b].mean())
            if mean > best:
                best, pair = mean, (i, j)
        if best < threshold or pair is None:
            break
        i, j = pair
        clusters[i] = clusters[i] + clusters[j]
        del clusters[j]
    return {frozenset(c) for c in clusters}


@pytest.mark.parametrize("seed", range(5))
def test_average_linkage_matches_the_definition(seed):
    g = torch.Generator().manual_seed(seed)
    fire = torch.rand(200, 12, generator=g) < torch.rand(12, generator=g) * 0.5
    fire[:, 1] = fire[:, 0] | (torch.rand(200, generator=g) < 0.05)  # a near-duplicate pair
    sim = jaccard(fire)
    for threshold in (0.2, 0.4, 0.7):
        got = {frozenset(c) for c in average_linkage(sim, threshold)}
        assert got == _brute_average_linkage(sim.double(), threshold)
    assert sorted(i for c in average_linkage(sim, 0.3) for i in c) == list(range(12))


def test_majority_vote_and_coherence():
    fire = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 1], [1, 1, 1]], dtype=torch.bool)
    state = majority(fire, [[0, 1, 2]])[:, 0]
    assert state.tolist() == [True, False, False, True]  # at least 2 of 3 members
    assert majority(fire, [[0, 1]])[:, 0].tolist() == [True, True, False, True]  # 1 of 2 is half
    # member firing sets {0,1,3}, {0,3}, {2,3} against the state's {0,3}: Jaccard 2/3, 1, 1/3
    assert coherence(fire, [0, 1, 2], state) == pytest.approx((2 / 3 + 1 + 1 / 3) / 3)
    assert jaccard(torch.zeros(3, 2, dtype=torch.bool)).tolist() == [[0.0, 0.0], [0.0, 0.0]]


# --------------------------------------------------------------------------- token effects


@pytest.fixture(scope="module")
def spliced_corpus():
    model = sc.zoo.load_model("tiny")
    sc.splice(model, sc.zoo.load_saes("tiny", kind="resid") + sc.zoo.load_saes("tiny", kind="transcoder"))
    docs = automata.generate("markup", 6, seed=3)
    texts = ["".join(symbols[:40]) for symbols, _ in docs]
    return model, extract._Corpus(model, texts, None, progress=False)


def test_single_position_pass_reproduces_the_full_pass(spliced_corpus):
    model, corpus = spliced_corpus
    names = effects.frozen_inputs(model)
    cached = effects._cache(model, corpus, names, 3)
    positions = torch.arange(int(corpus.lengths[:3].sum()))
    probs = effects._single_positions(model, corpus, cached, positions, names, {})
    torch.testing.assert_close(probs, corpus.next_probs[positions], atol=1e-6, rtol=0)


def test_removal_equals_a_full_pass_with_the_members_taken_off(spliced_corpus):
    """A state's members removed at one position in the single-position pass = the same removal in
    a full forward pass of the text whose attention output at that position is held at its clean
    value (what "attention frozen" means), read at that position."""
    model, corpus = spliced_corpus
    sites = corpus.sites
    text, pos = 1, 7  # text position (no BOS on the embedded model)
    flat = int(corpus.lengths[:text].sum()) + pos
    at = corpus.token_ids == flat
    members = corpus.feature_ids[at][:5]  # five features active there, at several sites
    values = corpus.values[at][:5]
    fire = torch.zeros(int(corpus.lengths.sum()), 1, dtype=torch.bool)
    fire[flat, 0] = True
    effect = effects.next_token_effects(corpus, [members.tolist()], fire, contexts=3, per_state=4)

    row = corpus.rows[text].unsqueeze(0)
    clean = {}

    def keep(act, hook):
        clean[hook.name] = act.detach().clone()

    names = [f"blocks.{i}.hook_attn_out" for i in range(model.cfg.n_layers)]
    with torch.no_grad():
        model.run_with_hooks(row, fwd_hooks=[(n, keep) for n in names])
    hooks = []
    for n in names:
        hooks.append(
            (
                n,
                lambda act, hook: torch.cat(
                    [act[:, :pos], clean[hook.name][:, pos : pos + 1], act[:, pos + 1 :]], 1
                ),
            )
        )
    for feature, value in zip(members.tolist(), values.tolist()):
        site, index = corpus.feature_of(feature)

        def take_off(act, hook, index=index, value=value):
            act = act.clone()
            act[0, pos, index] -= value
            return act

        hooks.append((f"{sites[site]}.hook_sae_acts_post", take_off))
    with torch.no_grad():
        removed = model.run_with_hooks(row, fwd_hooks=hooks)[0, pos].double().softmax(-1)[corpus.vocab]
    expected = corpus.next_probs[flat] - removed
    torch.testing.assert_close(effect[0], expected, atol=1e-6, rtol=0)


def test_trained_states_cause_their_successor_tokens(spliced_corpus):
    """On markup, removing the '<' state takes probability off tag names: the effect is model
    behaviour that a random direction does not show."""
    model, corpus = spliced_corpus
    opens = corpus.tokens == model.to_single_token("<")
    fire = opens[:, None]
    sites = {s: k for k, s in enumerate(corpus.sites)}
    active = corpus.feature_ids[torch.isin(corpus.token_ids, opens.nonzero().squeeze(-1))]
    members = torch.unique(active)
    top = torch.bincount(active, minlength=corpus.n_features)[members].argsort(descending=True)[:20]
    effect = effects.next_token_effects(corpus, [members[top].tolist()], fire, contexts=6, per_state=64)[0]
    promoted = [model.to_string(corpus.vocab[i : i + 1]) for i in effect.topk(3).indices.tolist()]
    tags = set(automata.CONTAINER_TAGS + automata.VOID_TAGS)
    assert all(t in tags for t in promoted), promoted
    assert sites  # the corpus keeps its sites in stage order


def test_extraction_refuses_a_model_without_attention_hooks(spliced_corpus, monkeypatch):
    """A model without per-block attention-output hooks cannot have its attention frozen: refused
    by name, before any work (checked on a stand-in, since a bridge builds its hook_dict afresh)."""
    from types import SimpleNamespace

    hooks = {"blocks.0.hook_resid_pre": None, "blocks.0.hook_attn_out": None}
    stand_in = SimpleNamespace(cfg=SimpleNamespace(n_layers=2), hook_dict=hooks)
    with pytest.raises(ValueError, match=r"blocks\.1\.hook_attn_out"):
        effects.frozen_inputs(stand_in)
    hooks["blocks.1.hook_attn_out"] = None
    assert effects.frozen_inputs(stand_in)[-1] == "blocks.1.hook_attn_out"
    model, _ = spliced_corpus
    monkeypatch.setattr(
        extract, "frozen_inputs", lambda m: effects.frozen_inputs(SimpleNamespace(cfg=m.cfg, hook_dict={}))
    )
    with pytest.raises(ValueError, match="blocks.0.hook_resid_pre"):
        sc.automaton(model, ["<p>x</p>"], progress=False)


# --------------------------------------------------------------------------- loops


def _toy(weights: dict[tuple[int, int], float], frequencies: list[float], firing=None) -> FeatureAutomaton:
    n = len(frequencies)
    dense = torch.zeros(n, n, dtype=torch.float64)
    for (a, b), w in weights.items():
        dense[a, b] = w
    if firing is None:  # each state fires on its own block of tokens: no two states overlap
        firing = torch.zeros(10 * n, n, dtype=torch.bool)
        for i in range(n):
            firing[10 * i : 10 * i + 10, i] = True
    states = [State(i, [("blocks.0.hook_resid_post", i)], f"s{i}", f) for i, f in enumerate(frequencies)]
    transitions = [Transition(a, b, "token", w) for (a, b), w in weights.items()]
    return FeatureAutomaton(
        states, transitions, firing, torch.tensor([firing.shape[0]]), weights={"token": dense}
    )


def _walks(table: dict[str, str], n: int = 40, length: int = 60, seed: int = 0) -> list[str]:
    """``n`` texts of one-letter symbols walking ``table`` (symbol -> its possible next symbols)."""
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        symbol, text = rng.choice(sorted(table)), []
        for _ in range(length):
            text.append(symbol)
            symbol = rng.choice(table[symbol])
        texts.append("".join(text))
    return texts


def _corpus(texts: list[str], fires: list[str], noise: float = 0.0) -> FeatureAutomaton:
    """An automaton whose state i fires on the symbols ``fires[i]`` ("~": on a random ``noise`` share of
    all tokens), with the texts' firing as its corpus."""
    symbols = [c for t in texts for c in t]
    rng = random.Random(1)
    firing = torch.tensor([[c in f or (f == "~" and rng.random() < noise) for f in fires] for c in symbols])
    states = [
        State(i, [("blocks.0.hook_resid_post", i)], f, float(firing[:, i].float().mean()))
        for i, f in enumerate(fires)
    ]
    return FeatureAutomaton(states, [], firing, torch.tensor([len(t) for t in texts]))


def test_lift_discounts_a_broad_destination():
    fsa = _toy({(0, 1): 0.6, (0, 2): 0.6}, [0.1, 0.1, 0.5])
    lift = lifts(fsa)
    assert float(lift[0, 1]) == pytest.approx((0.6 - 0.1) / 0.9)
    assert float(lift[0, 2]) == pytest.approx((0.6 - 0.5) / 0.5)
    assert float(lift[1, 0]) == 0.0  # clipped at 0


def test_strength_is_jaccard_over_consecutive_tokens_corrected_for_chance():
    # A -> B -> C -> A always; W fires on half the tokens at random. Pairs never cross texts.
    fsa = _corpus(["ABCABCABCA", "BCABCABCAB"] * 20, ["A", "B", "C", "~"], noise=0.5)
    strength = strengths(fsa)
    assert float(strength[0, 1]) == pytest.approx(1.0)  # every A is followed by B and every B led by A
    assert float(strength[0, 0]) == 0.0 and float(strength[1, 0]) == 0.0  # never A A, never B A
    assert float(strength[3, 3]) < 0.05  # a broad random state does not loop onto itself by chance
    assert float(strength[3, 1]) < 0.05
    fsa = _corpus(["AB", "AB"], ["A", "B"])  # B then A only across two texts: not a pair
    assert float(strengths(fsa)[1, 0]) == 0.0


def test_markov_check_flags_a_mixed_state_and_sinks_the_paths_never_taken():
    # Two true loops A B C and D E F, joined by C -> D and F -> A. M fires on both B and E (there is
    # no state for B or E alone), so A -> M -> F and D -> M -> C look as strong step by step as the
    # true paths A -> M -> C and D -> M -> F, but are never taken.
    texts = _walks({"A": "B", "B": "C", "C": "AD", "D": "E", "E": "F", "F": "DA"})
    fsa = _corpus(texts, ["A", "C", "D", "F", "BE"])
    consistency = markov_consistency(fsa)
    assert float(consistency[:4].min()) == pytest.approx(1.0)
    assert float(consistency[4]) == pytest.approx(0.5, abs=0.1)  # half its expected paths are taken
    found = loops(fsa, None, successors=3)
    assert {frozenset(loop.states) for loop in found[:2]} == {frozenset({0, 4, 1}), frozenset({2, 4, 3})}
    assert len(found) == 2  # A -> M -> F and D -> M -> C: consistency 0, score 0, never listed
    assert all(loop.consistency == pytest.approx(0.5, abs=0.1) for loop in found[:2])
    for loop in found:  # a loop's score is its weakest strength x consistency x the length factor
        assert loop.score == pytest.approx(loop.weakest * loop.consistency * (1 - 1 / 6) ** 2)
    # with a state for B and one for E, A's successor M is skipped (it fires where B fires)
    fsa = _corpus(texts, ["A", "B", "C", "D", "E", "F", "BE"])
    assert all(6 not in loop.states for loop in loops(fsa, None, successors=3))


def test_markov_factors_and_loops_do_not_depend_on_the_order_of_the_states():
    # A state with fewer than NEIGHBOURS neighbours of positive strength (the one that always
    # fires) used to pool arbitrary strength-0 "neighbours", picked by topk's tie order.
    texts = _walks({"a": "bc", "b": "cd", "c": "ae", "d": "ab", "e": "ed"}, n=30, length=40)
    fsa = _corpus(texts, ["a", "b", "c", "d", "e", "ab", "ce", "~", "~", "abcde"], noise=0.3)
    reference = markov_consistency(fsa)
    found = {tuple(loop.states): (loop.score, loop.consistency) for loop in loops(fsa, None)}
    assert found
    for seed in range(5):
        order = list(range(len(fsa.states)))
        random.Random(seed).shuffle(order)
        shuffled = FeatureAutomaton([fsa.states[i] for i in order], [], fsa.firing[:, order], fsa.lengths)
        assert torch.allclose(markov_consistency(shuffled), reference[order], rtol=0, atol=1e-12)
        again = {tuple(loop.states): (loop.score, loop.consistency) for loop in loops(shuffled, None)}
        assert again.keys() == found.keys()
        for key, (score, consistency) in found.items():
            assert again[key] == (pytest.approx(score, abs=1e-12), pytest.approx(consistency, abs=1e-12))


def test_self_loops_rank_after_structural_loops_and_variants_after_distinct_loops():
    # X -> Y -> Z -> X, Z -> T, T -> T | X: a 3-loop, a 4-loop through T and T's self-loop.
    texts = _walks({"X": "Y", "Y": "Z", "Z": "XT", "T": "TX"})
    fsa = _corpus(texts, ["X", "Y", "Z", "T"])
    found = loops(fsa, None)
    assert [3] in [loop.states for loop in found]
    assert found[-1].states == [3] and len(found) == 3
    assert found[-1].score == pytest.approx(found[-1].weakest * found[-1].consistency / 4)
    # A -> (b | B) -> C -> A, and D -> E -> F -> D in other texts: A B C is a variant of A b C.
    texts = _walks({"A": "bB", "b": "C", "B": "C", "C": "A"}, n=20) + _walks(
        {"D": "E", "E": "F", "F": "D"}, n=20
    )
    fsa = _corpus(texts, ["A", "b", "B", "C", "D", "E", "F"])
    found = loops(fsa, None)
    assert found[0].states == [4, 5, 6]
    assert {tuple(loop.states) for loop in found[1:]} == {(0, 1, 3), (0, 2, 3)}
    variant = found[2]
    assert variant.score == pytest.approx(VARIANT * variant.weakest * variant.consistency * (5 / 6) ** 2)
    assert fsa.loops(1) == found[:1]


def test_a_region_that_a_loop_runs_through_has_no_self_loop_of_its_own(monkeypatch):
    # X -> Y -> Z -> X | T, T -> T | X; in half of the texts (lowercase) R fires on x, y and z: a
    # region, persistent because the loop runs through it. T's self-loop is its own.
    table = {"X": "Y", "Y": "Z", "Z": "XT", "T": "TX"}
    lower = {k.lower() if k != "T" else k: v.lower().replace("t", "T") for k, v in table.items()}
    texts = _walks(table, n=20) + _walks(lower, n=20, seed=1)
    fsa = _corpus(texts, ["Xx", "Yy", "Zz", "T", "xyz"])
    found = [loop.states for loop in loops(fsa, None)]
    assert [3] in found and [4] not in found
    assert found[0][:3] == [0, 1, 2]  # the structural loops come first
    monkeypatch.setattr(loops_module, "COVERED", 1.01)  # without the rule the region's self-loop is listed
    assert [4] in [loop.states for loop in loops(fsa, None)]


def test_a_region_that_two_loops_run_through_has_no_self_loop_of_its_own():
    # X -> Y -> Z -> X and, in other texts, P -> Q -> R -> P; in half of each (lowercase) G fires on
    # every symbol: a region spanning both loops, half in each, so neither covers it alone (the
    # blind url language has one: a feature from the end of a host through the query).
    first, second = {"X": "Y", "Y": "Z", "Z": "X"}, {"P": "Q", "Q": "R", "R": "P"}
    texts = []
    for k, table in enumerate((first, second)):
        lower = {a.lower(): b.lower() for a, b in table.items()}
        texts += _walks(table, n=20, seed=2 * k) + _walks(lower, n=20, seed=2 * k + 1)
    fsa = _corpus(texts, ["Xx", "Yy", "Zz", "Pp", "Qq", "Rr", "xyzpqr"])
    found = [loop.states for loop in loops(fsa, None)]
    assert [0, 1, 2] in found and [3, 4, 5] in found and [6] not in found
    inter = fsa.firing.T.float() @ fsa.firing.float()
    for cycle in ([0, 1, 2], [3, 4, 5]):  # the premise: neither loop covers the region alone
        assert not loops_module._covered(fsa.firing, 6, cycle, inter)
    kept = [(1.0, 1.0, 1.0, [0, 1, 2]), (1.0, 1.0, 1.0, [6]), (1.0, 1.0, 1.0, [6, 3])]
    assert loops_module._structural(kept, 6) == [0, 1, 2]  # not a self-loop, not a loop through it


def test_a_self_loop_half_outside_a_loop_whose_states_overlap_is_kept():
    # X, Y, Z loop; w is both X and Y (they overlap little). S fires on s and w: 40% of it inside
    # the loop's states, though the sum of its overlaps with X and Y counts w twice (80%).
    fsa = _corpus(["xyz" * 20] * 200 + ["sswsw" * 12] * 20, ["xw", "yw", "z", "sw"])
    assert [3] in [loop.states for loop in loops(fsa, None)]


def test_loops_never_taken_are_not_listed():
    table = {"X": "Y", "Y": "Z", "Z": "XT", "T": "TX"}
    lower = {k.lower() if k != "T" else k: v.lower().replace("t", "T") for k, v in table.items()}
    fsa = _corpus(_walks(table, n=20) + _walks(lower, n=20, seed=1), ["Xx", "Yy", "Zz", "T", "xyz"])
    found = loops(fsa, None)
    assert found and all(loop.score > 0 for loop in found)


def test_a_loop_through_a_state_and_its_subset_reads_one_role_twice(monkeypatch):
    # A B C E b F: D fires on b only, a subset of B (Jaccard 1/2, below role_threshold=0.6 here), so
    # A -> B -> C -> E -> D -> F reads the role B twice.
    fsa = _corpus(["ABCEbF" * 10] * 20, ["A", "Bb", "C", "E", "b", "F"])
    found = [loop.states for loop in loops(fsa, None, role_threshold=0.6)]
    assert [0, 1, 2, 3, 4, 5] not in found
    monkeypatch.setattr(loops_module, "_repeats_role", lambda cycle, overlap: False)
    assert [0, 1, 2, 3, 4, 5] in [loop.states for loop in loops(fsa, None, role_threshold=0.6)]


def test_loops_of_a_wide_branching_automaton_are_found_without_a_strength_floor():
    # shell-like: a command C branches four ways (flag F, argument A, pipe P, newline N); every
    # branch's Jaccard strength is about 0.1, so a floor of 0.1 leaves almost no loop.
    texts = _walks({"C": "FAPN", "F": "FAPN", "A": "APN", "P": "C", "N": "C"}, n=40, length=80)
    fsa = _corpus(texts, ["C", "F", "A", "P", "N"])
    found = [loop.states for loop in loops(fsa, None)]
    assert found[:2] == [[0, 3], [0, 1, 4]]  # C P, C F N: true loops through the command first
    assert [loop.states for loop in loops(fsa, None, min_lift=0.1)] == [[2]]  # A's self-loop only


def test_loops_near_duplicates_fold_and_bad_arguments_fail():
    # state 3 fires where B fires: the loop A -> dup -> C is the loop A -> B -> C again (one role)
    fsa = _corpus(["ABCABCABCA", "BCABCABCAB"] * 20, ["A", "B", "C", "B"])
    assert [loop.states for loop in loops(fsa, None, successors=3)] == [[0, 1, 2]]
    assert loops(_corpus(["AB"], ["A", "B"]), None) == []
    for kwargs, message in [
        (dict(successors=0), "successors=0"),
        (dict(min_lift=2), "min_lift=2"),
        (dict(top=0), "top=0"),
        (dict(max_length=True), "max_length=True"),
        (dict(role_threshold=-0.1), "role_threshold=-0.1"),
    ]:
        with pytest.raises(ValueError, match=message):
            loops(fsa, **kwargs)
    broken = FeatureAutomaton(fsa.states, [], fsa.firing[:, :2], fsa.lengths)
    with pytest.raises(ValueError, match="expected \\[tokens, 4 states\\]"):
        loops(broken)
    broken = FeatureAutomaton(fsa.states, [], fsa.firing, fsa.lengths + 1)
    with pytest.raises(ValueError, match="fsa.lengths sums to"):
        loops(broken)


def test_positions_count_from_each_texts_start():
    fsa = _corpus(["ABA", "BA", "A"], ["A", "B"], noise=0.0)
    assert fsa.positions().tolist() == [0, 1, 2, 0, 1, 0]
    with pytest.raises(ValueError, match="fsa.lengths sums to 7 but fsa.firing has 6"):
        FeatureAutomaton(fsa.states, [], fsa.firing, fsa.lengths + torch.tensor([1, 0, 0])).positions()


def test_loop_scores_name_states_through_the_truth():
    fsa = _corpus(["ABABABABAB"] * 5 + ["CCCCCCCCCC"] * 5, ["A", "B", "C~"], noise=0.0)
    found = fsa.loops(None)
    assert [loop.states for loop in found] == [[0, 1], [2]]
    labels = [list(t) for t in ["ABABABABAB"] * 5 + ["CCCCCCCCCC"] * 5]
    result = score_loops(fsa, found, labels, [("A", "B"), ("B", "A")])
    assert result.names == [["A", "B"], ["C"]] and result.true == [True, False]
    assert (result.n_true, result.n_distinct, result.longest_in_top3) == (1, 1, 2)


def test_pinning_sets_every_member_where_the_state_is_off(spliced_corpus):
    """In pin mode each member is set to its pin value at positions where the state is off: the
    single-position pass then equals one with those activations overwritten by hand."""
    model, corpus = spliced_corpus
    flat = 5
    active = corpus.feature_ids[corpus.token_ids == flat][:2].tolist()
    silent = [f for f in range(40) if f not in corpus.feature_ids[corpus.token_ids == flat].tolist()][:2]
    group = active + silent
    pins = {f: 2.0 + k for k, f in enumerate(group)}
    fire = torch.ones(int(corpus.lengths.sum()), 1, dtype=torch.bool)
    fire[flat, 0] = False  # the state is off only at `flat`
    effect = effects.next_token_effects(corpus, [group], fire, contexts=1, per_state=4, pins=pins)[0]
    names = effects.frozen_inputs(model)
    cached = effects._cache(model, corpus, names, 1)
    seen = {}

    def overwrite(act, hook):
        site = hook.name.removesuffix(".hook_sae_acts_post")
        out = act.clone()
        for f in group:
            s, index = corpus.feature_of(f)
            if corpus.sites[s] == site:
                out[0, 0, index] = pins[f]
                seen[f] = True
        return out

    hooks = [(n, (lambda v: lambda a, hook: v)(cached[n][flat : flat + 1].unsqueeze(1))) for n in names]
    hooks += [(f"{site}.hook_sae_acts_post", overwrite) for site in corpus.sites]
    with torch.no_grad():
        logits = model.run_with_hooks(corpus.tokens[flat : flat + 1].unsqueeze(1), fwd_hooks=hooks)
    pinned = logits[0, -1].double().softmax(-1)[corpus.vocab]
    torch.testing.assert_close(effect, pinned - corpus.next_probs[flat], atol=1e-6, rtol=0)
    assert len(seen) == len(group)


def test_exclusive_pinning_also_zeroes_the_other_states_active_there(spliced_corpus):
    """``exclusive`` (the default) replaces the position's state: where A is pinned, the members of
    every other state that are active there are set to 0 as well (at every site), and the other
    states' silent members are left alone. Two states, each pinned at its own position, members at
    the first and last dictionaries; ``exclusive=False`` only pins. Checked against hand-made hooks."""
    model, corpus = spliced_corpus
    first, last = corpus.feature_offset(0), corpus.feature_offset(len(corpus.sites) - 1)
    size = corpus.feature_offset(1) - first
    pos_a, pos_b = 5, 11

    def active(pos: int) -> set[int]:
        return set(corpus.feature_ids[corpus.token_ids == pos].tolist())

    def silent(site_start: int, pos: int, n: int) -> list[int]:
        return [f for f in range(site_start, site_start + size) if f not in active(pos) | active(pos_b)][:n]

    on_a = sorted(active(pos_a) - active(pos_b))
    on_a = [next(f for f in on_a if f < first + size), next(f for f in on_a if f >= last)]
    state_a = silent(first, pos_a, 2) + silent(last, pos_a, 1)  # off at pos_a, where it is pinned
    pins = {f: 2.0 + k for k, f in enumerate(state_a)}
    names = effects.frozen_inputs(model)
    cached = effects._cache(model, corpus, names, 1)
    seen: dict[str, torch.Tensor] = {}

    def by_hand(pos: int, pinned: list[int], zeroed: list[int]) -> torch.Tensor:
        def overwrite(act, hook):
            seen[hook.name] = act[0, 0].clone()  # as re-encoded, before this site's own edits
            site = hook.name.removesuffix(".hook_sae_acts_post")
            out = act.clone()
            for f, value in [*((f, pins[f]) for f in pinned), *((f, 0.0) for f in zeroed)]:
                s, index = corpus.feature_of(f)
                if corpus.sites[s] == site:
                    out[0, 0, index] = value
            return out

        hooks = [(n, (lambda v: lambda a, hook: v)(cached[n][pos : pos + 1].unsqueeze(1))) for n in names]
        hooks += [(f"{site}.hook_sae_acts_post", overwrite) for site in corpus.sites]
        with torch.no_grad():
            logits = model.run_with_hooks(corpus.tokens[pos : pos + 1].unsqueeze(1), fwd_hooks=hooks)
        return logits[0, -1].double().softmax(-1)[corpus.vocab] - corpus.next_probs[pos]

    by_hand(pos_a, state_a, on_a)  # a last-site feature, silent at pos_a, that A's pin switches on
    switched_on = seen[f"{corpus.sites[-1]}.hook_sae_acts_post"].nonzero().squeeze(-1) + last
    switched_on = [f for f in switched_on.tolist() if f not in active(pos_a) | active(pos_b) | set(state_a)]
    state_b = on_a + switched_on[:1]  # on at pos_a at both sites, plus a member silent there
    pins |= {f: 2.0 + k for k, f in enumerate(state_b)}
    fire = torch.ones(int(corpus.lengths.sum()), 2, dtype=torch.bool)
    fire[pos_a, 0] = fire[pos_b, 1] = False  # each state is off (pinned) at one position
    kw = dict(contexts=1, per_state=4, pins=pins)
    replaced = effects.next_token_effects(corpus, [state_a, state_b], fire, **kw)
    added = effects.next_token_effects(corpus, [state_a, state_b], fire, exclusive=False, **kw)
    a_on_at_b = [f for f in state_a if f in active(pos_b)]
    torch.testing.assert_close(replaced[0], by_hand(pos_a, state_a, on_a), atol=1e-6, rtol=0)
    torch.testing.assert_close(replaced[1], by_hand(pos_b, state_b, a_on_at_b), atol=1e-6, rtol=0)
    torch.testing.assert_close(added[0], by_hand(pos_a, state_a, []), atol=1e-6, rtol=0)
    torch.testing.assert_close(added[1], by_hand(pos_b, state_b, []), atol=1e-6, rtol=0)
    assert float((replaced[0] - added[0]).abs().max()) > 1e-3  # the zeroing changes the answer ...
    assert float((by_hand(pos_a, state_a, state_b) - replaced[0]).abs().max()) > 1e-4  # ... and so
    # would zeroing B's silent member, which the pin switches on: it is A's effect and is kept


def test_dictionaries_where_attention_is_frozen_are_left_out_with_a_warning():
    """An SAE on an attention output (or the embeddings) sits where the single-position pass
    patches frozen values in: its edits would vanish, so its features are left out of the token
    effects, loudly, instead of silently counting as 'no effect'."""
    from sae_circuits.fsa.effects import frozen_site

    assert frozen_site("blocks.2.hook_attn_out") and frozen_site("blocks.1.attn.hook_z")
    assert frozen_site("blocks.0.hook_resid_pre") and frozen_site("hook_embed")
    assert frozen_site("blocks.1.hook_attn_in") and frozen_site("blocks.0.hook_v_input")
    assert not frozen_site("blocks.1.hook_resid_post") and not frozen_site("blocks.3.hook_mlp_out")
    assert not frozen_site("blocks.1.hook_resid_pre") and not frozen_site("blocks.0.ln2.hook_normalized")
    from tests.conftest import random_sae

    model = sc.zoo.load_model("tiny")
    attn = random_sae(hook_name="blocks.0.hook_attn_out", d_in=model.cfg.d_model, seed=3)
    docs = automata.generate("markup", 8, seed=3)
    with sc.spliced(model, [attn] + sc.zoo.load_saes("tiny", kind="resid")[1:2]):
        with pytest.warns(UserWarning, match=r"blocks\.0\.hook_attn_out"):
            fsa = sc.automaton(model, ["".join(s[:40]) for s, _ in docs], max_states=16, attention_contexts=0,
                               progress=False)  # fmt: skip
    assert fsa.weights["token"].shape == (len(fsa.states), len(fsa.states))


def test_average_linkage_of_nothing_is_nothing():
    assert average_linkage(torch.zeros(0, 0), 0.5) == []


def test_token_rows_with_bos_need_a_bos_token(spliced_corpus, monkeypatch):
    """prepend_bos with token rows on a model without a BOS id used to drop each text's first
    token silently; it is refused instead."""
    model, _ = spliced_corpus
    monkeypatch.setattr(model, "tokenizer", None)
    with pytest.raises(ValueError, match="prepend_bos=True with token rows"):
        sc.automaton(model, [[5, 6, 7, 8]], prepend_bos=True, progress=False)


def test_loop_scores_count_a_cyclic_sequence_once_and_never_name_a_silent_state():
    # two recovered states (0 and 2) fire on A, so loops may name A twice; state 4 never fires
    fsa = _corpus(["ABAC"] * 10, ["A", "B", "A", "C", "Z"])
    truth = [("A", "B"), ("B", "A"), ("A", "C"), ("C", "A"), ("A", "A")]
    result = score_loops(fsa, [[0, 1, 2, 3], [2, 3, 0, 1], [4]], [list("ABAC")] * 10, truth)
    assert result.names == [["A", "B", "A", "C"], ["A", "C", "A", "B"], [None]]
    # one cyclic sequence read from two starts is one distinct loop; a silent state is named by
    # nothing (it was named after the first true state, A, whose self-loop is true)
    assert result.true == [True, True, False] and (result.n_true, result.n_distinct) == (2, 1)


def test_loop_scores_can_name_states_through_the_languages_own_automaton():
    # P and Q are equivalent (each reads ' a' into A); a recovered state firing on both is named P
    # on the spec's states, so A -> "P" is false there, and true once P and Q are one state
    truth = automata.Automaton(
        "pq", ("P", "Q", "A", "N"),
        {"START": {"P": ("p",)}, "P": {"A": ("a",)}, "Q": {"A": ("a",)}, "A": {"Q": ("q",), "N": ("n",)},
         "N": {"P": ("p",)}},
    )  # fmt: skip
    fsa = _corpus(["paqanpaqan"] * 4, ["pq", "a"])
    labels = [["P", "A", "Q", "A", "N", "P", "A", "Q", "A", "N"]] * 4
    spec = score_loops(fsa, [[0, 1]], labels, truth)
    merged = score_loops(fsa, [[0, 1]], labels, truth, merge_equivalent=True)
    assert spec.names == [["P", "A"]] and spec.true == [False]
    assert merged.names == [["P+Q", "A"]] and merged.true == [True]
    with pytest.raises(ValueError, match="merge_equivalent=True needs the true automaton"):
        score_loops(fsa, [[0, 1]], labels, [("P", "A")], merge_equivalent=True)
