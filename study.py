"""Studies beyond the paper on an experiment's finished runs: slide context, ensembles, calibration,
and a learning curve, written to one Markdown report.

    python study.py --workdir=/tmp/real_245 --output=/tmp/real_245/study.md

--workdir holds training runs named as `experiment/study.py` lists them (mobilenet_v1_patient,
mobilenet_v2_patient, v1_class_weights, v1_patients_0.25, v1_patients_0.5);
results/real_245/README.md gives the commands that train them. Each run's validation and test
P(IDC) are computed once and cached in its folder (predictions_<split>.npz).
"""

from __future__ import annotations

import pathlib

from absl import flags

from trainer import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("workdir", None, "The experiment directory: one folder per training run.")
    flags.DEFINE_string("output", None, "The Markdown report to write.")
    flags.mark_flags_as_required(["workdir", "output"])


def main(argv):
    if len(argv) > 1:
        raise cli.UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not pathlib.Path(FLAGS.workdir).is_dir():
        raise cli.UserError(f"--workdir={FLAGS.workdir} is not a folder")
    from experiment import study

    pathlib.Path(FLAGS.output).write_text(study.render(FLAGS.workdir))
    print(f"wrote {FLAGS.output}")


if __name__ == "__main__":
    define_flags()
    cli.run(main)
