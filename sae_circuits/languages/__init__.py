"""Languages and corpora: synthetic languages with known automata, and the texts built from them.

- :mod:`~sae_circuits.languages.automata`: automaton specs (built-in ``markup``, ``kvlog``, or your
  own JSON), the document generator and the labeller that gives every token its true state;
- :mod:`~sae_circuits.languages.texts`: ready-made offline texts (:func:`corpus_texts`, :func:`offline_mix`,
  :func:`probe_texts`);
- :mod:`~sae_circuits.languages.corpus`: the embedded model's five-part training corpus (what
  :mod:`sae_circuits.recipes` trains on);
- :mod:`~sae_circuits.languages.equivalence`: the states of a spec that no text can tell apart
  (:func:`equivalent_states`).
"""

from sae_circuits.languages import automata
from sae_circuits.languages.equivalence import equivalent_states
from sae_circuits.languages.texts import PROMPTS, corpus_texts, offline_mix, probe_texts

__all__ = ["PROMPTS", "automata", "corpus_texts", "equivalent_states", "offline_mix", "probe_texts"]
