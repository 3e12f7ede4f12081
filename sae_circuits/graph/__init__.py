"""Attribution graphs: sparse graph math (graph.py); the attribution pass and exports follow."""
