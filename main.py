"""Trains MobileNetV1/V2 on the IDC histopathology patches.

    python main.py --config=configs/v1.py --workdir=/tmp/idc_v1
    python main.py --config=configs/v2.py --workdir=/tmp/idc_v2 --config.num_epochs=1

Rerunning the same command resumes from the newest checkpoint in --workdir. A mistake (a
mistyped config key, a value of the wrong type, a missing config file or download, a workdir in
use by another run, a resume with another config) ends in one line and exit status 2
(`trainer/cli.py`).
"""

from absl import flags, logging
from ml_collections import config_flags

from trainer import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "the directory of the run's checkpoints, metrics and plots")
config_flags.DEFINE_config_file(
    "config", None, "the training configuration, a file in configs/", lock_config=True
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise cli.UserError(f"unexpected arguments {argv[1:]}: every setting is a --flag")
    # Here, not at the top: flag mistakes are reported before JAX loads.
    import jax  # noqa: PLC0415

    from trainer import config_checks, startup, train_and_evaluate  # noqa: PLC0415

    config_checks.check(FLAGS.config)
    multi_process = startup.start(FLAGS.config)
    try:
        train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except jax.errors.JaxRuntimeError:
        if multi_process:
            logging.error(
                "A collective operation failed: another process of this run failed or was "
                "killed (see its log). Rerun all processes with the same command to resume "
                "from the last checkpoint."
            )
        raise


if __name__ == "__main__":
    cli.run(main)
