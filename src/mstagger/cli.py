"""The ``mstagger`` command: ``predict``, ``tags``, ``report`` for users, and each pipeline stage by name."""

from __future__ import annotations

import importlib
import sys

STAGES = ("download", "extract", "prepare", "train", "evaluate")
USAGE = """usage: mstagger COMMAND [ARGS]

commands:
  predict FILE...   tag your own audio with a trained model bundle (see `mstagger predict -h`)
  tags              merged tag table, split sizes and leakage from MTAT metadata alone (`mstagger tags -h`)
  report [EXP...]   each metric's mean, std, min and max across experiments (`mstagger report -h`)
  download | extract | prepare | train | evaluate
                    run one pipeline stage with ./params.yaml (what `dvc repro` runs)
"""


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a subcommand; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "predict":
        from mstagger.predict import main as predict_main

        return predict_main(rest)
    if command == "tags":
        from mstagger.tags_cli import main as tags_main

        return tags_main(rest)
    if command == "report":
        from mstagger.report import main as report_main

        return report_main(rest)
    if command in STAGES:
        importlib.import_module(f"mstagger.{command}").main()
        return 0
    print(f"error: unknown command {command!r}\n{USAGE}", file=sys.stderr, end="")
    return 2


if __name__ == "__main__":
    sys.exit(main())
