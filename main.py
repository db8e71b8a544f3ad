"""Trains MobileNetV1/V2 on the IDC histopathology patches.

    python main.py --config=configs/v1.py --workdir=/tmp/idc_v1
    python main.py --config=configs/v2.py --workdir=/tmp/idc_v2 --config.num_epochs=1

Rerunning the same command resumes from the newest checkpoint in --workdir.
"""

import logging as std_logging
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from input_pipeline.sources import ManualDownloadMissingError
from trainer import startup, train_and_evaluate


class _HideLibraryChatter(std_logging.Filter):
    """Drops INFO records of orbax (several per checkpoint); warnings and errors pass."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and plots.")
config_flags.DEFINE_config_file(
    "config", None, "Training configuration (a file in configs/).", lock_config=True
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.get_absl_handler().addFilter(_HideLibraryChatter())
    multi_process = startup.start(FLAGS.config)
    logging.info("Config:\n%s", FLAGS.config)
    try:
        train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except ManualDownloadMissingError as error:
        # The user's next step, not a bug: the message says what to download and where.
        logging.error("%s", error)
        sys.exit(2)
    except jax.errors.JaxRuntimeError:
        if multi_process:
            logging.error(
                "A collective operation failed: another process of this run failed or was "
                "killed (see its log). Rerun all processes with the same command to resume "
                "from the last checkpoint."
            )
        raise


if __name__ == "__main__":
    app.run(main)
