"""`python -m ablations [NAME] [--quick] [--seeds N] [--workers N] [--out DIR]`: all comparisons, then REPORT.md.

NAME (default `all`) picks one entry of `ablations.registry`, as `lab ablate NAME` does. Resumable: rerun
the same command after a stop and finished runs are reused.
"""

from __future__ import annotations

import importlib
import sys

from ablations import registry
from ablations.report import report
from ablations.runner import Runner, cli


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    name = argv.pop(0) if argv and not argv[0].startswith("-") else "all"
    try:
        module = registry.module(name)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if name != "all":
        return importlib.import_module(module).main(argv)
    args = cli(__doc__, argv)
    runner = Runner(args)
    comparisons = [importlib.import_module(registry.module(n)).comparison(args.quick) for n in registry.SUITE]
    if args.plan:
        print("\n".join(runner.plan_lines(comparisons)))
        return 0
    runner.run_all(comparisons)
    path = runner.out / "REPORT.md"
    if args.quick and not args.out:  # the quick report sits beside the full one, results in quick/
        path = runner.out.parent / "REPORT.quick.md"
    report(
        runner.out,
        list(registry.SUITE),
        runner.wall_s,
        path=path,
        links=f"{runner.out.name}/" if path.parent != runner.out else "",
    )
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
