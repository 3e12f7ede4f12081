"""Deprecated path of :mod:`sae_circuits.recipes.base64_steering` (moved there); removed in the next release.

``python -m sae_circuits.zoo.base64_steering`` still runs it."""

if __name__ == "__main__":
    from sae_circuits.recipes.base64_steering import main

    main()
else:
    from sae_circuits._moved import forward_to

    __getattr__ = forward_to(__name__, "sae_circuits.recipes.base64_steering")
