"""Attribution graphs: the attribution (attribution.py, which orders the steps of rows.py,
passes.py, edge_store.py and build.py), the frozen replacement model (replacement.py), sparse
graph math (influence.py), the graph object and its file formats."""

from sae_circuits.graph.attribution import attribute
from sae_circuits.graph.attribution_graph import AttributionGraph
from sae_circuits.graph.targets import Feature, LogitDirection

__all__ = ["AttributionGraph", "Feature", "LogitDirection", "attribute"]
