"""A feature dashboard for the embedded model's base64 feature, offline.

    python examples/feature_dashboard.py [--out base64_feature.html]

The feature (layer 1 residual SAE, #5) is the one docs/zoo.md steers with; the page shows its top
contexts, activation histogram, logit effects and clamped generations.
"""

from __future__ import annotations

import argparse
import warnings

import sae_circuits as sc
from sae_circuits.languages import probe_texts

warnings.filterwarnings("ignore")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="base64_feature.html", help="the page to write")
    args = parser.parse_args()
    model = sc.zoo.load_model("tiny")
    sae = sc.zoo.load_saes("tiny", kind="resid")[1]
    blobs, code = probe_texts(seed=7)
    texts = [model.to_tokens(t, prepend_bos=False)[0][:256] for t in code[:20] + blobs[:10]]
    prompts = ["The king said unto his daughter,", "def parse(self, text):\n    return"]
    with sc.spliced(model, [sae]):
        path = sc.write_dashboard(model, sae.cfg.site, 5, texts, args.out, steer_prompts=prompts)
    print("wrote", path)


if __name__ == "__main__":
    main()
