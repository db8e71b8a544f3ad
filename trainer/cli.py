"""What the programs share at their door: flags, a quiet console, and one line per user mistake.

    from trainer import cli
    ...
    raise cli.UserError(f"{path} is not a training run: no config.json in it")
    ...
    if __name__ == "__main__":
        cli.run(main)          # absl.app.run, with the three things below

`run` is `absl.app.run` with
- flags parsed by `parse_flags`: a mistyped flag or config key (the closest key named, also when it
  lives under another parent: `--config.model.image_size` -> `--config.preprocess.image_size`), a
  value of the wrong type, a missing config file or a missing required flag is one line on stderr
  and exit status 2, before `main` runs;
- a user error raised by `main` (`UserError`, the input pipeline's `DataError` such as a missing
  Kaggle download, absl's `UsageError`) printed as `error: <message>`, exit status 2, no
  traceback. Tracebacks are for bugs;
- a console that says what matters (`quiet_console`): log lines without absl's prefix (date,
  thread, file), warnings as `warning: ...`, and third-party lines that tell a user nothing
  dropped where they are made (INFO of libraries, TensorFlow's start-up banner, TFDS notes about
  its own bookkeeping).
"""

from __future__ import annotations

import difflib
import logging as std_logging
import os
import re
import sys
from collections.abc import Callable

from absl import app, flags, logging

EXIT_USER_ERROR = 2

# TensorFlow is imported only for TensorBoard logging (clu) and by TFDS; its C++ start-up lines
# (oneDNN notice, CPU feature guard, "All log messages before absl::InitializeLog()") say nothing
# to a user. oneDNN's custom ops change the numerics of TensorFlow's own kernels only, which no
# computation here uses. Set before TensorFlow's first import; a user's own setting wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


class UserError(Exception):
    """A mistake the user can fix: printed as `error: <message>`, exit status 2, no traceback."""


def _user_errors() -> tuple[type[Exception], ...]:
    """The exceptions `run` prints as one line (imported late: the input pipeline loads JAX)."""
    from input_pipeline.errors import DataError  # noqa: PLC0415

    return (UserError, DataError, app.UsageError)


def fail(message: str) -> None:
    """Prints `error: <message>` on stderr and exits with status 2 (a user's mistake)."""
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    sys.exit(EXIT_USER_ERROR)


def run(
    main: Callable[[list[str]], object], user_errors: tuple[type[Exception], ...] = ()
) -> None:
    """`absl.app.run(main)`: flags by `parse_flags`, user errors as one line, a quiet console.

    `user_errors`: more exceptions that are the user's mistakes, such as the inference library's
    (`idc_inference.errors.USER_ERRORS`), which this library does not import.
    """
    more_user_errors = user_errors

    def guarded(argv: list[str]):
        quiet_console()
        try:
            return main(argv)
        except Exception as error:
            if isinstance(error, (*_user_errors(), *more_user_errors)):
                fail(str(error))
            raise

    app.run(guarded, flags_parser=parse_flags)


# ----------------------------------------------------------------------------- flags


def parse_flags(argv: list[str]) -> list[str]:
    """`FLAGS(argv)`, where every mistake on the command line ends in one line and exit 2."""
    try:
        remaining = flags.FLAGS(argv)
    except flags.Error as error:
        fail(flag_error_message(error, argv))
    except (AttributeError, KeyError, OSError, TypeError, ValueError):
        # ml_collections applies `--config.<key>` overrides while parsing; a key the config lacks
        # or a config file that did not load surfaces here as a plain exception.
        message = config_flag_problem(argv)
        if message is None:
            raise
        fail(message)
    for name in _config_flag_names():
        try:
            flags.FLAGS[name].value.keys()  # a config file that did not load raises here
        except OSError:
            fail(_missing_config_file(name, _argv_value(argv, name) or ""))
    return remaining


def flag_error_message(error: flags.Error, argv: list[str]) -> str:
    """absl's message for a flag error, rewritten to say what to do."""
    text = str(error)
    required = re.match(r"flag --(\w+)=None: Flag --\w+ must have a value other than None", text)
    if required:
        name = required.group(1)
        return f"--{name} is required: {flags.FLAGS[name].help}"
    illegal = re.match(r"flag --([\w.]+)=(.*?): (.*)", text, re.DOTALL)
    if illegal:
        name, value, reason = illegal.groups()
        expected = _expected_type(name)
        if expected:
            return f"--{name}={value}: {expected}, not {value!r}"
        return f"--{name}={value}: {reason.strip()}"
    unknown = re.match(r"Unknown command line flag '([\w.]+)'(?:\. Did you mean: (.*?) \?)?", text)
    if unknown:
        name, suggestions = unknown.groups()
        config_message = config_flag_problem(argv)
        if config_message:
            return config_message
        hint = f"; did you mean --{suggestions.split(',')[0].strip()}?" if suggestions else ""
        return f"unknown flag --{name}{hint} (--helpshort lists the flags)"
    return text.replace("\n", " ")


def _expected_type(flag_name: str) -> str | None:
    """'<key> takes an integer' for a config field flag, from the type of its default."""
    if flag_name not in flags.FLAGS:
        return None
    default = flags.FLAGS[flag_name].default
    kinds = {bool: "True or False", int: "an integer", float: "a number", str: "a string"}
    kind = kinds.get(type(default))
    key = flag_name.split(".", 1)[-1]
    return f"{key} takes {kind}" if kind else None


def _config_flag_names() -> list[str]:
    from ml_collections.config_flags import config_flags  # noqa: PLC0415

    registered = flags.FLAGS._flags().items()
    return [name for name, flag in registered if config_flags.is_config_flag(flag)]


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return ""


def _missing_config_file(name: str, path: str) -> str:
    configs_dir = os.path.dirname(path) or "."
    available = []
    if os.path.isdir(configs_dir):
        available = sorted(
            f
            for f in os.listdir(configs_dir)
            if f.endswith(".py") and "def get_config" in _read(os.path.join(configs_dir, f))
        )
    listed = f" ({configs_dir}/ has {', '.join(available)})" if available else ""
    return f"--{name}={path}: no such config file{listed}"


def _argv_value(argv: list[str], name: str) -> str | None:
    """The value given to --name in argv (`--name=value` or `--name value`), else None."""
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
        if arg == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def config_flag_problem(argv: list[str]) -> str | None:
    """What is wrong with a config flag of argv (a file that does not load, an unknown key)."""
    for name in _config_flag_names():
        flag = flags.FLAGS[name]
        path = _argv_value(argv, name) or (flag.default_as_str or "").strip("'\"")
        config = _load_config(name, path)
        if config is None:
            return _missing_config_file(name, path)
        for arg in argv:
            if not arg.startswith(f"--{name}."):
                continue
            key = arg[len(name) + 3 :].split("=", 1)[0]
            problem = unknown_key_message(config, key, prefix=f"--{name}.")
            if problem:
                return problem
    return None


def _load_config(name: str, path: str):
    """The config of a config-file flag's file, or None when it does not load (no such file)."""
    from ml_collections.config_flags import config_flags  # noqa: PLC0415

    if not path:
        return None
    try:
        config = config_flags.ConfigFileFlagParser(name, lock_config=False).parse(path)
        config.keys()  # a config that failed to load raises here
    except OSError:
        return None
    return config


def flat_keys(config, prefix: str = "") -> list[str]:
    """Every key of a ConfigDict, dotted, parents included ('model', 'model.alpha', ...)."""
    keys = []
    for key, value in config.items():
        keys.append(prefix + key)
        if hasattr(value, "items"):
            keys += flat_keys(value, prefix + key + ".")
    return keys


def closest_key(keys: list[str], wanted: str) -> str | None:
    """The key a mistyped `wanted` most likely meant: the same last part under another parent
    first (`model.image_size` -> `preprocess.image_size`), else the nearest spelling."""
    leaf = wanted.rsplit(".", 1)[-1]
    same_leaf = [k for k in keys if k.rsplit(".", 1)[-1] == leaf]
    if same_leaf:
        return same_leaf[0]
    close = difflib.get_close_matches(wanted, keys, n=1, cutoff=0.6)
    if close:
        return close[0]
    leaves = {k.rsplit(".", 1)[-1]: k for k in keys}
    close = difflib.get_close_matches(leaf, list(leaves), n=1, cutoff=0.6)
    return leaves[close[0]] if close else None


def unknown_key_message(config, key: str, prefix: str = "") -> str | None:
    """'--config.<key>: no such key; did you mean ...' when `key` is not in `config`, else None."""
    node = config
    for part in key.split("."):
        if not hasattr(node, "items") or part not in node:
            break
        node = node[part]
    else:
        return None
    suggestion = closest_key(flat_keys(config), key)
    hint = f"; did you mean {prefix}{suggestion}?" if suggestion else ""
    return (
        f"{prefix}{key}: the config has no key {key!r}{hint} (configs/default.py lists every key)"
    )


# ----------------------------------------------------------------------------- the console


class _ConsoleFormatter(std_logging.Formatter):
    """A log record as a user reads it: the message, warnings and errors marked as such."""

    def format(self, record: std_logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        if record.levelno >= std_logging.ERROR:
            return f"error: {message}"
        if record.levelno >= std_logging.WARNING:
            return f"warning: {message}"
        return message


# Third-party warnings that tell a user nothing: (logger-file fragment, message fragment).
_NOISE = (
    # TFDS finds the unfinished folder of a preparation it is about to (re)build.
    ("tensorflow_datasets", "has no dataset_info.json"),
    # JAX looks for a TPU on every start; a machine without one is not news.
    ("jax", "Unable to initialize backend"),
    # A mid-epoch checkpoint has no validation metric yet; the best checkpoint is chosen among
    # the end-of-epoch ones, which have it (trainer/checkpoints.py).
    ("orbax", "Requested `tracked_metric`; did not provide metrics."),
)


class ThirdPartyNoise(std_logging.Filter):
    """Drops log records of installed libraries below WARNING, and their warnings in `_NOISE`.

    The project's own modules (outside site-packages) always pass.
    """

    def filter(self, record: std_logging.LogRecord) -> bool:
        path = record.pathname.replace(os.sep, "/")
        if "-packages/" not in path:
            return True
        if record.levelno < std_logging.WARNING:
            return False
        message = record.getMessage()
        return not any(where in path and what in message for where, what in _NOISE)


def quiet_console() -> None:
    """Log lines without absl's prefix, and without third-party noise (`ThirdPartyNoise`)."""
    handler = logging.get_absl_handler()
    if not any(isinstance(f, ThirdPartyNoise) for f in handler.filters):
        handler.addFilter(ThirdPartyNoise())
    handler.setFormatter(_ConsoleFormatter())
