"""What the programs share at their door: a user's mistake ends in one line and exit status 2.

    from trainer import cli
    ...
    raise cli.UserError(f"{path} is not a training run: no config.json in it")
    ...
    if __name__ == "__main__":
        cli.run(main)          # absl.app.run, with UserError as one line on stderr

Tracebacks are for bugs: an error the user can fix (a wrong path, a folder without patches, a
flag out of range) is a `UserError`, or one of the input pipeline's own user-facing errors.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from absl import app

from input_pipeline.sources import ManualDownloadMissingError

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A mistake the user can fix: printed as `error: <message>`, exit status 2, no traceback."""


USER_ERRORS = (UserError, ManualDownloadMissingError)


def run(main: Callable[[list[str]], object]) -> None:
    """`absl.app.run(main)`, where a user error prints one line and exits with status 2."""

    def guarded(argv: list[str]):
        try:
            return main(argv)
        except USER_ERRORS as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)

    app.run(guarded)
