"""`python -m ablations [--quick] [--seeds N] [--workers N] [--out DIR]`: all comparisons, then REPORT.md.

Resumable: rerun the same command after a stop and finished runs are reused.
"""

from __future__ import annotations

import sys

from ablations import connector, frozen_encoders, instruction_aware, stage1
from ablations.report import report
from ablations.runner import Runner, cli

MODULES = {
    "connector": connector,
    "instruction_aware": instruction_aware,
    "frozen_encoders": frozen_encoders,
    "stage1": stage1,
}


def main() -> int:
    args = cli(__doc__)
    runner = Runner(args)
    comparisons = [mod.comparison(args.quick) for mod in MODULES.values()]
    runner.run_all(comparisons)
    report(runner.out, list(MODULES), runner.wall_s)
    print(f"report: {runner.out / 'REPORT.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
