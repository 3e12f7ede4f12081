"""Deprecated path of :mod:`sae_circuits.recipes.build` (moved there); removed in the next release.

``python -m sae_circuits.zoo.recipe`` still runs it."""

import sys

if __name__ == "__main__":
    from sae_circuits.recipes.build import main

    main(sys.argv[1:])
else:
    from sae_circuits._moved import forward_to

    __getattr__ = forward_to(__name__, "sae_circuits.recipes.build")
