"""Texts or token ids to the token row a model reads, with one BOS rule for every caller.

The BOS rule (:func:`token_row`):

1. ``bos`` says whether the row starts with the model's BOS token; ``bos=None`` means the model's
   own default, ``model.cfg.default_prepend_bos`` (TransformerLens's ``True`` when the config has
   none). The embedded models set it to ``False``: their tokenizer has no BOS habit.
2. A string is tokenized by ``model.to_tokens(text, prepend_bos=bos, truncate=False)``: never cut,
   so a text longer than the context reaches the caller's length check instead of being shortened
   in silence.
3. Token ids are what the model reads, as given (``ids="as_given"``: a graph's prompt ids, a
   dashboard's rows), unless the caller's ids are documented to be "without BOS"
   (``ids="like_text"``: :func:`sae_circuits.fsa.automaton`'s rows), when BOS (the tokenizer's
   ``bos_token_id``) is prepended exactly as for a string.

Callers check emptiness, shape and length themselves, with messages in their own words.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

IdsBos = Literal["as_given", "like_text"]


def resolve_bos(model: Any, bos: bool | None) -> bool:
    """``bos`` itself, or for ``None`` the model's ``cfg.default_prepend_bos`` (``True`` if unset)."""
    return bos if bos is not None else bool(getattr(model.cfg, "default_prepend_bos", True))


def token_row(
    model: Any, item: str | Sequence[int] | Tensor, *, bos: bool | None, ids: IdsBos = "as_given"
) -> Tensor:
    """The token row of one text or one sequence of token ids, under the module's BOS rule.

    A string gives a 1-D row; ids come back as ``torch.as_tensor(item)`` (any shape: the caller
    checks it), with BOS prepended only for ``ids="like_text"`` and a true ``bos`` (then ``item``
    must be 1-D). Raises ``ValueError`` when BOS is asked for on ids and the model has no BOS id.
    """
    use_bos = resolve_bos(model, bos)
    if isinstance(item, str):
        return model.to_tokens(item, prepend_bos=use_bos, truncate=False)[0]
    row = torch.as_tensor(item)
    if ids == "like_text" and use_bos:
        tokenizer = getattr(model, "tokenizer", None)
        if tokenizer is None or tokenizer.bos_token_id is None:
            raise ValueError(
                "prepend_bos=True with token rows needs the model's BOS token id, "
                "and this model has no tokenizer (or no BOS token); pass prepend_bos=False"
            )
        row = torch.cat([torch.tensor([tokenizer.bos_token_id], dtype=row.dtype, device=row.device), row])
    return row


def tokens_text(model: Any, tokens: Tensor) -> str:
    """A row of tokens as text, or their ids joined by spaces when the model has no tokenizer."""
    if getattr(model, "tokenizer", None) is None:
        return " ".join(str(int(t)) for t in tokens.reshape(-1))
    return str(model.to_string(tokens))


def token_text(model: Any, token: int) -> str:
    """One token's text, or its id as a string when the model has no tokenizer (a model built
    from a config reads token ids alone)."""
    if getattr(model, "tokenizer", None) is None:
        return str(int(token))
    return str(model.to_string(torch.tensor([int(token)])))
