"""The software a result was computed with, recorded beside it (run folders' run.json, ablation ledger
records), so that a result that changes after an upgrade can be traced to the package that changed."""

from __future__ import annotations

import importlib.metadata
import platform

PACKAGES = ("torch", "transformers", "triton", "peft")


def versions() -> dict[str, str]:
    """{"python": "3.11.7", "torch": "2.13.0+cpu", ...}; "absent" for a package not installed. Read from
    the installed distributions' metadata, so nothing is imported."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "absent"
    return out
