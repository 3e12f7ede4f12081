"""Splice SAEs, list a prompt's strongest features, and steer generation by clamping one.

Runs offline: `python examples/steer_feature.py` (on the embedded model once it is installed;
until then on a random GPT-2 with random SAEs, which shows the mechanics).
"""

from sae_circuits import demo

if __name__ == "__main__":
    demo.run(prompt="import os\nfor name in os.listdir(path):\n    ")
