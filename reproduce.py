"""The paper's experiment in one command: Table 1, Figures 2 and 3 and a leakage study -> report.md.

    python reproduce.py --workdir=/tmp/idc_paper
    python reproduce.py --workdir=/tmp/idc_paper --config.data.dataset=kaggle_idc   # real data
    python reproduce.py --workdir=/tmp/idc_paper --report_only   # re-render report.md only

"Study for Performance of MobileNetV1 and MobileNetV2 Based on Breast Cancer" trains MobileNetV1 and
MobileNetV2 from scratch (Adam 1e-4, 5 epochs, cross-entropy) on the Kaggle IDC patches, split at
random patch by patch, and reports train / validation accuracy (its Table 1: V1 0.849 / 0.857,
V2 0.819 / 0.743) and the accuracy curves of each model (its Figures 2 and 3).

This command trains four runs with that recipe (`--config`, configs/v1.py by default, plus any
`--config.*` overrides, applies to all four; the model name and split are set per run):

    <workdir>/mobilenet_v1_random_patch   the paper's protocol: a patient's patches in every split
    <workdir>/mobilenet_v2_random_patch
    <workdir>/mobilenet_v1_patient        patients disjoint across train / validation / test
    <workdir>/mobilenet_v2_patient

A run whose summary.json exists is finished and skipped; an interrupted one resumes from its newest
checkpoint. Then <workdir>/report.md is written with
- Table 1 as in the paper, extended with the majority-class baseline, balanced accuracy, F1 and ROC
  AUC (71.6% of the real patches are negative, so accuracy alone flatters a model), parameters,
  multiply-adds, training throughput and wall time, and the paper's numbers beside ours;
- fig2_mobilenet_v1.png and fig3_mobilenet_v2.png: train and validation accuracy per epoch;
- the leakage study: test metrics under the patch-level split next to the patient-level split.
  Neighbouring patches of one slide look alike, so a patch-level split tests on near-copies of
  training patches; the difference measures how much that inflates the paper's protocol.
"""

from __future__ import annotations

import pathlib
import shlex
import sys

from absl import app, flags, logging
from ml_collections import config_flags

REPO = pathlib.Path(__file__).resolve().parent

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the command-line flags; called only when this file runs as a program.

    absl flags are global to the process and predict.py, heatmap.py and reproduce.py share
    names (--workdir): defining them at import would stop one program, or a test, from
    importing the functions of another.
    """
    flags.DEFINE_string("workdir", None, "Directory of the four runs, report.md and its figures.")
    flags.DEFINE_bool(
        "report_only", False, "Only re-render report.md and the figures from the finished runs."
    )
    config_flags.DEFINE_config_file(
        "config",
        str(REPO / "configs" / "v1.py"),
        "Base configuration of all four runs; model.name and data.split are set per run.",
        lock_config=True,
    )
    flags.mark_flags_as_required(["workdir"])


def run_config(base_config, model: str, split: str):
    """A copy of the base config (still locked) with the model and the split of one run."""
    config = base_config.copy_and_resolve_references()
    config.model.name = model
    config.data.split = split
    return config


def run_all(base_config, workdir: str | pathlib.Path) -> None:
    """Trains the four runs one after the other; finished ones (summary.json) are skipped."""
    from trainer import RunDirectory, paper, train_and_evaluate

    for model in paper.MODELS:
        for split in paper.SPLITS:
            directory = paper.run_directory(workdir, model, split)
            if RunDirectory(directory).finished():
                logging.info("%s is finished (summary.json exists): skipped.", directory)
                continue
            logging.info("Training %s with the %s split in %s.", model, split, directory)
            train_and_evaluate(run_config(base_config, model, split), str(directory))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not FLAGS.report_only:
        from trainer import sharding

        sharding.start(FLAGS.config)
        run_all(FLAGS.config, FLAGS.workdir)
        import jax

        if jax.process_index() != 0:
            return
    command = "python reproduce.py " + " ".join(
        shlex.quote(arg) for arg in sys.argv[1:] if arg != "--report_only"
    )
    from trainer import paper

    path = paper.write_report(FLAGS.workdir, command)
    print(f"wrote {path}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
