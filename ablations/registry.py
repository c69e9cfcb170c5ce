"""Every comparison lab can run, by name: `python -m ablations NAME` and `lab ablate NAME` both read this.

`SUITE` runs together (one stage 0, one ledger, then REPORT.md). A sweep is a comparison of the same
runner, ledger and stage 0 that runs by name only, because it needs stage 0 the suite does not (the
held-out sweep: an LM per seed); the report shows it when its results exist. A name maps to its
module, whose `main` reads the suite's command-line flags."""

from __future__ import annotations

SUITE = ("connector", "instruction_aware", "frozen_encoders", "stage1")
SWEEPS = ("held_out",)  # held-out accuracy on an axis over stage-0 LMs (ablations/held_out.py)
NAMES = ("all", *SUITE, *SWEEPS)  # "all": the suite, then its report


def module(name: str) -> str:
    """The module that runs `name`; a ValueError naming the choices for anything else."""
    if name not in NAMES:
        raise ValueError(f"unknown ablation {name!r}; choose one of {list(NAMES)}")
    return "ablations" if name == "all" else f"ablations.{name}"
