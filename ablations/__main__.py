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
    path = runner.out / "REPORT.md"
    if args.quick and not args.out:  # the quick report sits beside the full one, results in quick/
        path = runner.out.parent / "REPORT.quick.md"
    report(
        runner.out,
        list(MODULES),
        runner.wall_s,
        path=path,
        links=f"{runner.out.name}/" if path.parent != runner.out else "",
    )
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
