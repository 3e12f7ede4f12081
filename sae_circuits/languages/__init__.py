"""Languages and corpora: synthetic languages with known automata, and the texts built from them.

- :mod:`~sae_circuits.languages.automata`: automaton specs (built-in ``markup``, ``kvlog``, or your
  own JSON), the document generator and the labeller that gives every token its true state;
- :mod:`~sae_circuits.languages.texts`: ready-made offline texts (:func:`corpus_texts`, :func:`offline_mix`,
  :func:`probe_texts`);
- :mod:`~sae_circuits.languages.corpus`: the embedded model's five-part training corpus (what
  :mod:`sae_circuits.recipes` trains on).
"""

from sae_circuits.languages import automata
from sae_circuits.languages.texts import PROMPTS, corpus_texts, offline_mix, probe_texts

__all__ = ["PROMPTS", "automata", "corpus_texts", "offline_mix", "probe_texts"]
