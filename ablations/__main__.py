"""`python -m ablations [NAME] [--quick] [--seeds N] [--workers N] [--out DIR]`: all comparisons, then REPORT.md.

NAME (default `all`) picks one entry of `ablations.registry`, as `lab ablate NAME` does; `--spec FILE`
runs a comparison written as YAML (`ablations.spec`) into OUT/<name>/, with its own REPORT.md there;
`--plan` prints every job's settings with where each came from, and what would train and why.
Resumable: rerun the same command after a stop and finished runs are reused.
"""

from __future__ import annotations

import importlib
import sys

from ablations import registry, spec
from ablations.plan import cli
from ablations.report import report
from ablations.runner import Runner
from lab.config import ConfigError


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
    try:
        return run(args)
    except ConfigError as e:  # a spec or an override that names no setting: one line, before anything trains
        print(f"error: {e}", file=sys.stderr)
        return 2


def run(args) -> int:
    runner = Runner(args)
    if args.spec:
        comparisons = [spec.load(args.spec)]
    else:
        comparisons = [importlib.import_module(registry.module(n)).comparison(args.quick) for n in registry.SUITE]
    if args.plan:
        print("\n".join(runner.plan_lines(comparisons)))
        return 0
    # a spec keeps its own clock beside its results: OUT/suite.json times the suite
    runner.run_all(comparisons, clock=runner.out / comparisons[0].name / "suite.json" if args.spec else None)
    if args.spec:
        path = runner.out / comparisons[0].name / "REPORT.md"
        report(runner.out, [comparisons[0].name], runner.wall_s, path=path, links="../")
        print(f"report: {path}")
        return 0
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
