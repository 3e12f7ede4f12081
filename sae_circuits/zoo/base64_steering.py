"""The dictionary-learning paper's classic on the embedded model: find the base64 feature and pin
it at its maximum observed activation while generating from English/code prompts; count the
continuations that contain a base64-looking run.

A base64-looking run: at least 16 characters of the base64 alphabet with no space, mixing upper
case, lower case and digits.
"""

from __future__ import annotations

import base64
import random
import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from sae_circuits.features import feature_activations, max_activation, selective_features
from sae_circuits.interventions import clamp, intervene
from sae_circuits.sae import SAE
from sae_circuits.splice import spliced

_RUN = re.compile(r"[A-Za-z0-9+/=]{16,}")

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


def looks_like_base64(text: str) -> bool:
    """Whether ``text`` holds a run of 16+ base64 characters mixing upper, lower case and digits."""
    return any(
        re.search("[A-Z]", run) and re.search("[a-z]", run) and re.search("[0-9]", run)
        for run in _RUN.findall(text)
    )


def probe_texts(seed: int = 0) -> tuple[list[str], list[str]]:
    """Base64 blobs and ordinary English/code text, generated offline, for finding the feature."""
    rng = random.Random(seed)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    code = [p.read_text(errors="ignore")[:3000] for p in sorted(stdlib.glob("*.py"))[10:40]]
    blobs = [base64.b64encode(rng.randbytes(rng.randint(200, 600))).decode() for _ in range(20)]
    blobs += [base64.b64encode(c[:800].encode()).decode() for c in code[:10]]
    return blobs, code + PROMPTS


def _encode(model: nn.Module, texts: list[str], length: int) -> Tensor:
    rows = [cast(Any, model).to_tokens(t, prepend_bos=False)[0, :length] for t in texts]
    rows = [r for r in rows if r.numel() == length]
    return torch.stack(rows)


@dataclass
class Base64Steering:
    """Result of the base64 steering measurement."""

    site: str
    feature: int
    value: float
    rate_in: float
    """Firing rate of the feature on base64 tokens."""
    rate_out: float
    """Firing rate on English/code tokens."""
    fraction_without: float
    """Continuations that contain a base64-looking run, without the clamp."""
    fraction_with: float
    """The same with the feature pinned at ``value`` from the last prompt token on."""
    n_prompts: int
    samples: list[tuple[str, str, str]]
    """(prompt, continuation without, continuation with) for the first prompts."""


@torch.no_grad()
def find_base64_feature(
    model: nn.Module, saes: list[SAE], length: int = 64
) -> tuple[SAE, int, float, float, float]:
    """The (SAE, feature) most selective for base64 text over English/code, with its firing
    rates and its maximum observed activation (on the base64 probe text)."""
    blobs, other = probe_texts()
    blob_tokens, other_tokens = _encode(model, blobs, length), _encode(model, other, min(length, 16))
    best = None
    for sae in saes:
        acts_in = feature_activations(model, sae, blob_tokens)[:, 8:]  # skip the blob's first tokens
        acts_out = feature_activations(model, sae, other_tokens)
        index, rate_in, rate_out = selective_features(acts_in, acts_out, k=1)[0]
        if best is None or rate_in - rate_out > best[2] - best[3]:
            best = (sae, index, rate_in, rate_out, max_activation(acts_in, [index])[0])
    assert best is not None
    return best


@torch.no_grad()
def measure(
    model: nn.Module,
    saes: list[SAE],
    max_new_tokens: int = 40,
    prompts: list[str] | None = None,
    progress: bool = False,
) -> Base64Steering:
    """Find the base64 feature, then generate greedily from each prompt with and without it pinned
    (``progress``: a bar over the prompts on stderr)."""
    prompts = prompts or PROMPTS
    sae, feature, rate_in, rate_out, value = find_base64_feature(model, saes)
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=False, verbose=False, stop_at_eos=False)
    hits = {False: 0, True: 0}
    samples = []
    tl = cast(Any, model)  # HookedTransformer or TransformerBridge: its TL API is not on nn.Module
    with spliced(model, [sae]):
        bar = tqdm(prompts, desc="base64 steering", unit="prompt", disable=not progress, leave=False)
        for i, prompt in enumerate(bar):
            tokens = tl.to_tokens(prompt, prepend_bos=False)
            n = tokens.shape[1]
            plain = tl.to_string(tl.generate(tokens, **kwargs)[0, n:])
            with intervene(model, [clamp(sae, feature, value, positions=slice(n - 1, None))]):
                pinned = tl.to_string(tl.generate(tokens, **kwargs)[0, n:])
            hits[False] += looks_like_base64(plain)
            hits[True] += looks_like_base64(pinned)
            if i < 3 or i == 10:
                samples.append((prompt, plain, pinned))
    return Base64Steering(
        sae.cfg.site, feature, value, rate_in, rate_out,
        hits[False] / len(prompts), hits[True] / len(prompts), len(prompts), samples,
    )  # fmt: skip


MARK_BEGIN, MARK_END = "<!-- base64:begin -->", "<!-- base64:end -->"


def markdown(result: Base64Steering, seconds: float) -> str:
    """The model card's section for the measurement."""
    lines = [
        MARK_BEGIN,
        "## Steering: the base64 feature",
        "",
        "The dictionary-learning paper's classic, reproduced by `python -m sae_circuits.zoo.base64_steering`"
        f" ({seconds:.0f} s): the feature most selective for base64 text over English/code, among all residual"
        " SAEs, is pinned at its maximum observed activation from the last prompt token on, during greedy"
        " generation (KV cache on) of 40 tokens from 20 English and code prompts. A continuation counts when"
        " it holds a base64-looking run: 16+ characters of the base64 alphabet with no space, mixing upper"
        " case, lower case and digits.",
        "",
        f"- feature: `{result.site}` #{result.feature}; fires on {result.rate_in:.0%} of base64 tokens and"
        f" {result.rate_out:.1%} of English/code tokens; pinned at {result.value:.2f}",
        f"- continuations with a base64-looking run: **{result.fraction_without:.0%} without** the clamp,"
        f" **{result.fraction_with:.0%} with** it ({result.n_prompts} prompts)",
        "",
        "| prompt | without | pinned |",
        "|---|---|---|",
    ]
    for prompt, plain, pinned in result.samples:
        cells = [repr(t)[1:-1].replace("|", "\\|")[:70] for t in (prompt, plain, pinned)]
        lines.append("| `" + "` | `".join(cells) + "` |")
    lines += ["", MARK_END]
    return "\n".join(lines)


def main() -> Base64Steering:
    """Measure on the embedded model; write the result into its card.json and docs/zoo.md."""
    import json
    import time
    from dataclasses import asdict

    from sae_circuits import zoo
    from sae_circuits.io import atomic_write_text
    from sae_circuits.zoo.dictionaries import DOCS, replace_section

    torch.manual_seed(0)
    started = time.time()
    model, saes = zoo.load("tiny")
    result = measure(model, saes)
    seconds = time.time() - started
    card_path = zoo.model_path("tiny") / "card.json"
    card = json.loads(card_path.read_text())
    card["base64_steering"] = asdict(result)
    atomic_write_text(card_path, json.dumps(card, indent=2))
    replace_section(DOCS, MARK_BEGIN, MARK_END, markdown(result, seconds))
    print(f"{result.site} #{result.feature}: base64-looking continuations {result.fraction_without:.0%} "
          f"without, {result.fraction_with:.0%} pinned at {result.value:.2f}")  # fmt: skip
    return result


if __name__ == "__main__":
    main()
