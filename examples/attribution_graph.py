"""Attribution graph of a prompt on the embedded model, offline: build, check, prune, export.

    python examples/attribution_graph.py [--out-dir graphs]

1. Splices the embedded MLP transcoders (every edge is then exact in the frozen model) and builds
   the graph of a Python prompt's next-token prediction.
2. Checks one edge the way the tests do: removes the strongest source feature of the top target in
   the frozen model and compares the target's change with the edge weight.
3. Prunes, prints the scores and the most influential features, and writes graph.json (the
   attribution-graph front end's schema), graph.graphml, graph.dot and graph.html.
"""

from __future__ import annotations

import argparse
import re
import warnings
from pathlib import Path

import torch

import sae_circuits as sc
from sae_circuits.graph.influence import NodeKind

warnings.filterwarnings("ignore")
PROMPT = "def area(radius):\n    return 3.14 * radius *"


def removal_effect(model, graph, source: int, target: int) -> float:
    """Change of the top logit target (demeaned logit) when ``source`` is removed, in the frozen
    model: attention patterns and LayerNorm scales at their prompt values, every site pinned."""
    tokens = torch.tensor([graph.tokens])
    frozen = re.compile(r".*(hook_pattern|hook_scale)$")
    with torch.no_grad():
        logits, cache = model.run_with_cache(
            tokens, names_filter=lambda n: n in graph.sites or bool(frozen.match(n))
        )
    site = graph.sites[int(graph.site[source])]
    sae = sc.saes_of(model)[site]
    pinned = cache[site].clone()
    pinned[0, int(graph.position[source])] -= (
        float(graph.activation[source]) * sae.W_dec[int(graph.index[source])]
    )
    hooks = [(name, _constant(value)) for name, value in cache.items() if frozen.match(name)]
    hooks += [(name, _constant(pinned if name == site else cache[name])) for name in graph.sites]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        removed = model(tokens)
    token = int(graph.index[target])
    demeaned = lambda lg: lg[0, -1, token] - lg[0, -1].mean()
    return float(demeaned(logits) - demeaned(removed))


def _constant(value):
    return lambda x, hook: value


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out-dir", default="graphs", help="where to write the graph files (default: graphs/)"
    )
    args = parser.parse_args()

    model = sc.zoo.load_model("tiny")
    sc.splice(model, sc.zoo.load_saes("tiny", kind="transcoder"))
    graph = sc.attribute(model, PROMPT, prepend_bos=False)
    print(graph)
    print("scores (full graph):", {k: round(v, 3) for k, v in graph.scores().items()})

    target = int(graph.nodes_of(NodeKind.TARGET)[0])
    incoming = graph.edges.target == target
    features = incoming & (graph.kind[graph.edges.source] == NodeKind.FEATURE)
    strongest = int(graph.edges.weight.abs().masked_fill(~features, -1).argmax())
    source, weight = int(graph.edges.source[strongest]), float(graph.edges.weight[strongest])
    effect = removal_effect(model, graph, source, target)
    print(f"edge {graph.labels[source]} -> {graph.labels[target]}: {weight:+.5f}; removing the feature in the "
          f"frozen model changes the target by {effect:+.5f}")  # fmt: skip

    pruned = graph.prune(node_threshold=0.8, edge_threshold=0.98)
    influence = pruned.influence()
    kept = pruned.nodes_of(NodeKind.FEATURE)
    print(f"pruned: {len(kept)} features, {pruned.n_edges} edges; most influential:")
    for node in kept[influence[kept].argsort(descending=True)[:5]].tolist():
        at = pruned.token_strings[int(pruned.position[node])]
        print(f"  {pruned.labels[node]:<22} at {at!r:<12} influence {float(influence[node]):.3f}")
    out = Path(args.out_dir)
    for suffix in (".json", ".graphml", ".dot", ".html"):
        print("wrote", pruned.save(out / f"graph{suffix}"))
    sc.unsplice(model)


if __name__ == "__main__":
    main()
