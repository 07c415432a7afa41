"""What every command line of the project shares: an error is one line, ``error: <what was wrong
and where>``, with exit code 2 (its traceback only with ``--debug``); Ctrl-C exits with 130.

    if __name__ == "__main__":
        cli.run(main)   # main(argv) parses with cli.Parser
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


class Parser(argparse.ArgumentParser):
    """``argparse`` with ``--debug`` and one-line errors (``error: ...``, exit code 2)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)
        self.add_argument("--debug", action="store_true",
                          help="on an error, show its traceback instead of one line")

    def error(self, message: str):
        print(f"error: {one_line(message)}", file=sys.stderr, flush=True)
        sys.exit(2)


def one_line(message) -> str:
    """An error message (a string or an exception) on one line."""
    text = str(message) or type(message).__name__
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def run(main: Callable[[list[str]], object], argv: list[str] | None = None) -> None:
    """Call ``main(argv)`` as a command: an exception becomes ``error: ...`` on stderr and exit
    code 2 (re-raised with ``--debug``), Ctrl-C exit code 130, an int result the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        result = main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        sys.exit(130)
    except Exception as err:
        if "--debug" in argv:
            raise
        print(f"error: {one_line(err)}", file=sys.stderr, flush=True)
        sys.exit(2)
    if isinstance(result, int) and not isinstance(result, bool):
        sys.exit(result)
