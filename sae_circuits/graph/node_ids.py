"""Node ids of an :class:`~sae_circuits.graph.attribution_graph.AttributionGraph` in the
attribution-graph front end's style (``E_818_0``, ``3_1205_4``, ``2m_error_1``, ``13_262_5``...),
shared by every file format and the HTML view.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import TYPE_CHECKING

from sae_circuits.graph.influence import NodeKind

if TYPE_CHECKING:
    from sae_circuits.graph.attribution_graph import AttributionGraph


def _n_layers(g: AttributionGraph) -> int:
    if "n_layers" in g.metadata:
        return int(g.metadata["n_layers"])
    # Without metadata: one past the deepest site node; site-less targets sit at n_layers itself.
    sited = g.site >= 0
    deepest = [int(g.layer[sited].max()) + 1] if bool(sited.any()) else []
    logits = g.layer[(g.kind == NodeKind.TARGET) & ~sited].tolist()
    return max(deepest + logits, default=0)


def _site_labels(sites: list[str]) -> list[str]:
    """``"3"`` when block 3 hosts one site, else ``"3a"``/``"3m"``/``"3r"`` by hook kind (then the site index
    if still ambiguous). Sites outside ``blocks.N`` are ``"s{i}"``."""
    blocks = []
    for i, hook in enumerate(sites):
        match = re.search(r"blocks\.(\d+)\.", hook)
        blocks.append(match.group(1) if match else f"s{i}")
    suffixes = [
        "a" if "attn" in h or "hook_z" in h else "m" if "mlp" in h else "r" if "resid" in h else "s"
        for h in sites
    ]  # always a letter: a disambiguated label never looks like another block's plain number
    per_block = Counter(blocks)
    labels = [b if per_block[b] == 1 else b + s for b, s in zip(blocks, suffixes)]
    per_label = Counter(labels)
    return [label if per_label[label] == 1 else f"{label}{i}" for i, label in enumerate(labels)]


def site_kind(hook: str) -> str:
    """``"attention"``, ``"mlp"``, ``"residual"`` or ``"site"``: what a site's hook reads or replaces."""
    if "attn" in hook or "hook_z" in hook:
        return "attention"
    return "mlp" if "mlp" in hook else "residual" if "resid" in hook else "site"


def viewer_rows(sites: list[str]) -> list[int]:
    """The front end's row (its ``layer`` number) of each site: the block index when every block
    hosts at most one site (circuit-tracer's numbering), else the site's rank in computation order,
    so that two sites of one block never share a row (the viewer draws one ``layer`` per row and
    names features and error nodes by ``layer``).

    >>> viewer_rows(["blocks.0.hook_mlp_out", "blocks.2.hook_mlp_out"])
    [0, 2]
    >>> viewer_rows(["blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out", "blocks.1.hook_resid_post"])
    [0, 1, 2]
    """
    blocks = [re.match(r"blocks\.(\d+)\.", hook) for hook in sites]
    numbers = [int(m.group(1)) for m in blocks if m]
    if len(numbers) == len(sites) and len(set(numbers)) == len(numbers) and numbers == sorted(numbers):
        return numbers
    return list(range(len(sites)))


def node_ids(g: AttributionGraph) -> list[str]:
    """Unique ids in the front end's style: ``E_{token}_{pos}`` (tokens), ``{site}_{feature}_{pos}``
    (features and feature targets), ``{site}_error_{pos}``, ``{site}_other``,
    ``{n_layers+1}_{token}_{pos}`` (logit targets) and ``{n_layers+1}_dir{k}_{pos}`` (directions).

    >>> target = sc.Feature("blocks.2.hook_mlp_out", -1, 812)
    >>> with sc.spliced(model, transcoders):
    ...     g = sc.attribute(model, "<p>hi</p>", targets=target, max_feature_nodes=0)
    >>> ids = node_ids(g)
    >>> ids[:2], ids[7], ids[-1]
    (['E_28_0', 'E_80_1'], '0_error_0', '2_812_6')
    """
    sites, top, directions = _site_labels(g.sites), _n_layers(g) + 1, 0
    ids: list[str] = []
    columns = (g.kind.tolist(), g.site.tolist(), g.position.tolist(), g.index.tolist())
    for kind, site, pos, index in zip(*columns):
        if kind == NodeKind.TOKEN:
            ids.append(f"E_{index}_{pos}")
        elif kind == NodeKind.TARGET and site < 0:
            ids.append(f"{top}_{index}_{pos}" if index >= 0 else f"{top}_dir{directions}_{pos}")
            directions += index < 0
        elif not 0 <= site < len(sites):
            raise ValueError(
                f"node {len(ids)} ({NodeKind(kind).name}) has site {site}; there are {len(sites)} sites"
            )
        elif kind == NodeKind.ERROR:
            ids.append(f"{sites[site]}_error_{pos}")
        elif kind == NodeKind.OTHER:
            ids.append(f"{sites[site]}_other")
        else:  # a feature, or a feature used as a target
            ids.append(f"{sites[site]}_{index}_{pos}")
    seen: set[str] = set()
    for i, node_id in enumerate(ids):
        if node_id in seen:
            raise ValueError(f"duplicate node id {node_id!r} (node {i}, first at node {ids.index(node_id)})")
        seen.add(node_id)
    return ids
