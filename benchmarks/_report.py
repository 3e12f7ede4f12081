"""What every benchmark report says about where it ran, and how it lands in docs/benchmarks.md."""

from __future__ import annotations

import importlib.metadata
import re
import sys
from pathlib import Path

import torch

from sae_circuits.io import atomic_write_text


def machine() -> str:
    """CPU model, logical cores and torch threads."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        match = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
        cores = len(re.findall(r"^processor\s*:", cpuinfo, re.M))
        name = match.group(1).strip() if match else "unknown CPU"
    except OSError:
        name, cores = "unknown CPU", 0
    return f"{name} ({cores} logical cores), torch threads = {torch.get_num_threads()}"


def versions(packages: tuple[str, ...] = ("torch", "transformer-lens", "sae-lens")) -> str:
    parts = []
    for package in packages:
        try:
            parts.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            parts.append(f"{package} (not installed)")
    return ", ".join(parts) + f", Python {sys.version.split()[0]}"


def write_section(section: str, heading: str, path: Path) -> None:
    """Add or replace the section that starts with ``heading``; other sections are kept."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.M | re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section.rstrip() + "\n\n", text, count=1).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section.rstrip() + "\n"
    atomic_write_text(path, text)
