"""The ``mstagger`` command: ``predict``, ``info``, ``tags`` and ``report`` for users, and each pipeline stage
by name."""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import logging
import os
import sys
from typing import NoReturn

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


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one ``error: ...`` line (exit status 2), no usage block."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a subcommand; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if argv else 2
    try:
        code = _dispatch(argv[0], argv[1:])
        sys.stdout.flush()  # a write that fails shows here, not in a traceback (or not at all) at exit
        return code
    except OSError as err:  # the reader went away (`mstagger info | head`), a full disk, /dev/full
        if err.filename is not None or err.errno not in _OUTPUT_ERRORS:
            raise
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        if isinstance(err, BrokenPipeError):
            print("error: the output was closed (broken pipe)", file=sys.stderr)
        else:
            print(f"error: cannot write the output: {err.strerror}", file=sys.stderr)
        return 2


_OUTPUT_ERRORS = (errno.EPIPE, errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


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
        from mstagger.windows import start_forkserver

        start_forkserver()  # its imports run while predict's (torch) do
        from mstagger.predict import main as predict_main

        return predict_main(rest)
    if command == "info":
        from mstagger.info import main as info_main

        return info_main(rest)
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
    run()
