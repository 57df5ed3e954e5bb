"""The ``mstagger`` command: ``predict``, ``info``, ``tags`` and ``report`` for users, and each pipeline stage
by name."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
from typing import NoReturn

from mstagger.core.errors import guarded

STAGES = ("download", "extract", "prepare", "train", "evaluate")
USAGE = """usage: mstagger COMMAND [ARGS]

commands:
  predict PATH...   tag your own audio, files or folders, with a trained model (`mstagger predict -h`)
  info [MODEL]      what a model bundle knows: data, split, scores, tags and thresholds (`mstagger info -h`)
  tags              merged tag table, split sizes and leakage from MTAT metadata alone (`mstagger tags -h`)
  report [EXP...]   each metric's mean, std, min and max across experiments (`mstagger report -h`)
  download | extract | prepare | train | evaluate
                    run one pipeline stage with ./params.yaml (what `dvc repro` runs)
"""


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a subcommand; returns the exit status.

    Subcommands raise; expected failures end here as :func:`~mstagger.core.errors.exit_status` says
    (each subcommand's ``main`` is :func:`~mstagger.core.errors.guarded` too, for callers from Python).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if argv else 2
    return guarded(_run)(argv[0], argv[1:])


def _run(command: str, rest: list[str]) -> int:
    code = _dispatch(command, rest)
    sys.stdout.flush()  # a write that fails shows here, not in a traceback (or not at all) at exit
    return code


# Commands that load torch for a user and leave nothing for exit handlers to finish (their files are
# closed when they return): they end without Python's orderly teardown (see :func:`run`).
QUICK_EXIT = ("predict", "info")


def run() -> NoReturn:
    """The ``mstagger`` console command: :func:`main`, and for :data:`QUICK_EXIT` a quick exit.

    With torch loaded, Python's orderly exit (destroying every module and object one by one) takes
    0.4 s on the 2-core machine: a quarter of ``predict``'s start-up cost. Those commands flush the
    standard streams and leave with ``os._exit``; their decoding processes have ended by then, and the
    forkserver ends with its parent.
    """
    argv = sys.argv[1:]
    code = main(argv)
    if argv and argv[0] in QUICK_EXIT:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):  # a reader that went away
                stream.flush()
        os._exit(code)
    sys.exit(code)


def _dispatch(command: str, rest: list[str]) -> int:
    if command == "predict":
        from mstagger.inference.windows import start_forkserver

        start_forkserver()  # its imports run while predict's (torch) do
        from mstagger.commands.predict import main as predict_main

        return predict_main(rest)
    if command == "info":
        from mstagger.commands.info import main as info_main

        return info_main(rest)
    if command == "tags":
        from mstagger.commands.tags import main as tags_main

        return tags_main(rest)
    if command == "report":
        from mstagger.commands.report import main as report_main

        return report_main(rest)
    if command in STAGES:
        importlib.import_module(f"mstagger.{command}").main()
        return 0
    print(f"error: unknown command {command!r}\n{USAGE}", file=sys.stderr, end="")
    return 2


if __name__ == "__main__":
    run()
