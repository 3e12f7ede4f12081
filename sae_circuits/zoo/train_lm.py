"""Deprecated path of :mod:`sae_circuits.recipes.train_lm` (moved there); removed in the next release."""

from sae_circuits._moved import forward_to

__getattr__ = forward_to(__name__, "sae_circuits.recipes.train_lm")
