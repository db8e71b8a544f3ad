"""Errors of the input pipeline that the user can fix (a missing download, a split that cannot
be evaluated, an unknown data set name): the programs print their message as one line and exit
with status 2 (`trainer.cli`), without a traceback. Any other exception is a bug."""


class DataError(ValueError):
    """A data problem the user can fix; the message says what is wrong and what to do."""
