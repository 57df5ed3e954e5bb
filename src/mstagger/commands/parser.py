"""The one argument parser of every ``mstagger`` subcommand: a bad flag is one ``error: ...`` line."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one ``error: ...`` line (exit status 2), no usage block."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)
