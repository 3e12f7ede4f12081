"""Deprecated path of :mod:`sae_circuits.recipes.dictionaries` (moved there); removed in the next release.

``python -m sae_circuits.zoo.dictionaries`` still runs it."""

if __name__ == "__main__":
    from sae_circuits.recipes.dictionaries import main

    main()
else:
    from sae_circuits._moved import forward_to

    __getattr__ = forward_to(__name__, "sae_circuits.recipes.dictionaries")
