"""Ready-made offline texts: an automaton's documents with their true states, base64 in code, and
the English/code probe texts that the base64 measurements contrast with base64 blobs.

>>> texts, states = corpus_texts("markup", 20, 96, seed=1)  # 20 documents cut to 96 symbols
>>> len(texts), len(states[0]) <= 96
(20, True)
"""

from __future__ import annotations

import base64
import os
import random
import sysconfig
from pathlib import Path
from typing import Any

import sae_circuits.languages.automata as automata

__all__ = ["PROMPTS", "corpus_texts", "offline_mix", "probe_texts"]

PROMPTS = [
    "The king said unto his daughter,",
    "To be, or not to be, that is",
    "Good morrow, my lord. What news",
    "Enter HAMLET and HORATIO.\n",
    "O Romeo, Romeo! wherefore art thou",
    "My mistress' eyes are nothing like",
    "Now is the winter of our discontent",
    "Friends, Romans, countrymen, lend me",
    "The quality of mercy is not strained;",
    "All the world's a stage, and all",
    "def parse(self, text):\n    return",
    "import os\nfor name in os.listdir(path):\n    ",
    "class Reader:\n    def __init__(self, path):\n",
    "    if not isinstance(value, int):\n        raise",
    "def main(argv=None):\n    parser = argparse.",
    "    for key, value in items.items():\n        ",
    "    result = []\n    while True:\n        ",
    "from collections import OrderedDict\n\n",
    "    except KeyError:\n        return None\n",
    "    with open(filename, 'rb') as f:\n        data = ",
]
"""English and code prompts: the generation prompts of the base64 steering measurement."""


def probe_texts(seed: int = 0) -> tuple[list[str], list[str]]:
    """Base64 blobs and ordinary English/code text, generated offline, for finding the feature."""
    rng = random.Random(seed)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    code = [p.read_text(errors="ignore")[:3000] for p in sorted(stdlib.glob("*.py"))[10:40]]
    blobs = [base64.b64encode(rng.randbytes(rng.randint(200, 600))).decode() for _ in range(20)]
    blobs += [base64.b64encode(c[:800].encode()).decode() for c in code[:10]]
    return blobs, code + PROMPTS


def corpus_texts(
    name: str | os.PathLike[str] | automata.Automaton | dict[str, Any], n: int, length: int, seed: int = 0
) -> tuple[list[str], list[list[str]] | None]:
    """Offline texts for an automaton: an automaton's documents (cut to ``length`` symbols, with
    their true states) or base64 blobs mixed with code (no ground truth). ``name`` is a zoo
    automaton (``markup``, ``kvlog``), ``base64``, an ``Automaton``, a spec dict
    (:meth:`~sae_circuits.languages.automata.Automaton.from_dict`) or the path of a JSON spec."""
    automata.check_count("n", n, 1)
    automata.check_count("length", length, 1)
    if isinstance(name, dict):  # a spec as a Python object
        name = automata.Automaton.from_dict(name)
    if not isinstance(name, (str, os.PathLike, automata.Automaton)):
        raise ValueError(
            f"corpus {name!r}: expected a name, an Automaton, a spec dict or the path of a JSON spec"
        )
    if isinstance(name, automata.Automaton) or name in automata.AUTOMATA:
        docs = automata.generate(name, n, seed=seed)
        return ["".join(symbols[:length]) for symbols, _ in docs], [states[:length] for _, states in docs]
    if name == "base64":  # a base64 blob inside ordinary code, so the blob is not every token
        rng = random.Random(seed)
        code = probe_texts(seed)[1]
        texts = []
        for i in range(n):
            blob = base64.b64encode(rng.randbytes(length // 4)).decode()
            texts.append(f'{code[i % len(code)][: 2 * length]}\nDATA = "{blob}"\n')
        return texts, None
    if str(name).lower().endswith(".json") or Path(name).is_file():
        return corpus_texts(automata.load_automaton(name), n, length, seed)
    raise ValueError(
        f"--corpus {str(name)!r}: expected one of {sorted(automata.AUTOMATA) + ['base64']} or an "
        "automaton spec (.json)"
    )


def offline_mix(
    seed: int = 0, code_bytes: int = 6_000_000, base64_docs: int = 2_000, automaton_docs: int = 3_000
) -> dict[str, list[str]]:
    """The embedded model's corpus without its one download (English): ``{name: texts}`` for
    ``code`` (the standard library, ``code_bytes`` of it in a fixed order), ``base64``, ``markup``
    and ``kvlog``, generated offline with ``seed``. Train a second model on it with
    :func:`sae_circuits.recipes.train_lm.train_on_texts` (the universality analysis does).

    >>> mix = offline_mix(seed=1, code_bytes=20_000, base64_docs=2, automaton_docs=2)
    >>> sorted(mix), len(mix["markup"])
    (['base64', 'code', 'kvlog', 'markup'], 2)
    """
    from sae_circuits.languages.corpus import automaton_documents, base64_documents, code_documents

    for name, value in (
        ("code_bytes", code_bytes),
        ("base64_docs", base64_docs),
        ("automaton_docs", automaton_docs),
    ):
        automata.check_count(name, value, 1)
    code = code_documents(code_bytes)
    if not any(d.text.strip() for d in code):  # only the empty files (``__init__.py``) fitted
        raise ValueError(
            f"code_bytes={code_bytes}: no standard-library file with any code in it fits; give a few "
            "thousand bytes or more"
        )
    return {
        "code": [d.text for d in code],
        "base64": [d.text for d in base64_documents(base64_docs, seed, code)],
        **{
            name: [d.text for d in automaton_documents(name, automaton_docs, seed)]
            for name in ("markup", "kvlog")
        },
    }
