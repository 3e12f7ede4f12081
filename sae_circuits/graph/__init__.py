"""Attribution graphs: the attribution pass (attribution.py), the frozen replacement model
(replacement.py), sparse graph math (graph.py), the graph object and its file formats."""

from sae_circuits.graph.attribution import attribute
from sae_circuits.graph.attribution_graph import AttributionGraph
from sae_circuits.graph.targets import Feature, LogitDirection

__all__ = ["AttributionGraph", "Feature", "LogitDirection", "attribute"]
