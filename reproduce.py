"""The paper's experiment in one command: Table 1, Figures 2 and 3, the leakage study, and
optionally the comparison of models, seeds, the best recipe and its ablations -> report.md.

    python reproduce.py --workdir=/tmp/idc_paper                # the paper's four runs
    python reproduce.py --workdir=/tmp/idc_paper --report_only  # re-render report.md only
    # Everything in results/real_subset/, on the 245-patient subset:
    python reproduce.py --workdir=/tmp/real_subset --config.data.dataset=kaggle_idc \\
        --config.data.manual_dir=../shared/data/idc_subset \\
        --models=mobilenet_v1,mobilenet_v2,mobilenet_v3_small,mobilenet_v3_large,resnet50 \\
        --seeds=3 --best_config=configs/v1_best.py --ablations=all

"Study for Performance of MobileNetV1 and MobileNetV2 Based on Breast Cancer" trains MobileNetV1 and
MobileNetV2 from scratch (Adam 1e-4, 5 epochs, cross-entropy) on the Kaggle IDC patches, split at
random patch by patch, and reports train / validation accuracy (its Table 1: V1 0.849 / 0.857,
V2 0.819 / 0.743) and the accuracy curves of each model (its Figures 2 and 3).

This command trains the runs that `experiment.paper.plan` lists, each in its own directory under
--workdir, with the base config (`--config`, configs/v1.py by default, plus any `--config.*`
overrides):

    <model>_random_patch   the paper's protocol: a patient's patches in every split (V1, V2)
    <model>_patient        patients disjoint across train / validation / test (every model)
    <model>_patient_seed<k>, best_seed<k>, ablation_<name>   with --seeds (V1, V2, the best
                           recipe), --best_config, --ablations (names from configs/ablations.py)

A run whose summary.json exists is finished and skipped; an interrupted one resumes from its newest
checkpoint. Then <workdir>/report.md is written (`experiment/report.py`) with
- Table 1 as in the paper, extended with the majority-class baseline, balanced accuracy, F1 and ROC
  AUC (71.6% of the real patches are negative, so accuracy alone flatters a model), parameters,
  multiply-adds, training throughput and wall time, and the paper's numbers beside ours;
- fig2_mobilenet_v1.png and fig3_mobilenet_v2.png: train and validation accuracy per epoch;
- the leakage study: test metrics under the patch-level split next to the patient-level split.
  Neighbouring patches of one slide look alike, so a patch-level split tests on near-copies of
  training patches; the difference measures how much that inflates the paper's protocol;
- test metrics with 95% intervals (bootstrap over patients), calibration and the per-patient view;
  the comparison of models, the spread over seeds, the best recipe and its ablations when asked.
"""

from __future__ import annotations

import pathlib
import shlex
import sys
from collections.abc import Sequence

from absl import flags, logging
from ml_collections import config_flags

from trainer import cli

REPO = pathlib.Path(__file__).resolve().parent

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the command-line flags when this file runs as a program (predict.py says why)."""
    flags.DEFINE_string("workdir", None, "Directory of the runs, report.md and its figures.")
    flags.DEFINE_bool(
        "report_only", False, "Only re-render report.md and the figures from the finished runs."
    )
    config_flags.DEFINE_config_file(
        "config",
        str(REPO / "configs" / "v1.py"),
        "Base configuration of every run; the model, split and seed are set per run.",
        lock_config=True,
    )
    flags.DEFINE_list(
        "models",
        "mobilenet_v1,mobilenet_v2",
        "Models trained under the patient split (V1 and V2 also under the random patch split).",
    )
    flags.DEFINE_integer(
        "seeds", 1, "Seeds 0..n-1 of V1 and V2 (patient split) and of the best recipe."
    )
    flags.DEFINE_string("best_config", "", "A config file whose recipe is reported as the best.")
    flags.DEFINE_list(
        "ablations",
        [],
        "Also train these candidates of configs/ablations.py (their names, or 'all').",
    )
    flags.mark_flags_as_required(["workdir"])


def chosen_ablations(names: Sequence[str]) -> tuple[dict, ...]:
    """The entries of configs/ablations.py named (in that file's order); 'all' takes every one."""
    from configs import ablations

    known = [ablation["name"] for ablation in ablations.ABLATIONS]
    if list(names) == ["all"]:
        return ablations.ABLATIONS
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise cli.UserError(
            f"--ablations: unknown {', '.join(unknown)}; configs/ablations.py has "
            f"{', '.join(known)} (or 'all')"
        )
    return tuple(a for a in ablations.ABLATIONS if a["name"] in names)


def check_flags() -> None:
    """Refuses model names, seed counts and config files no run can use, before any training."""
    import mobilenets

    unknown = [name for name in FLAGS.models if name not in mobilenets.ARCHITECTURES]
    if unknown:
        raise cli.UserError(
            f"--models: unknown {', '.join(unknown)}; choose from "
            f"{', '.join(mobilenets.ARCHITECTURES)}"
        )
    if FLAGS.seeds < 1:
        raise cli.UserError(f"--seeds={FLAGS.seeds}: give at least 1")
    if FLAGS.best_config and not pathlib.Path(FLAGS.best_config).is_file():
        raise cli.UserError(f"--best_config={FLAGS.best_config}: no such config file")


def experiment_plan():
    from experiment import paper

    check_flags()
    return paper.plan(
        FLAGS.models,
        num_seeds=FLAGS.seeds,
        best_config=FLAGS.best_config,
        ablations=chosen_ablations(FLAGS.ablations),
    )


def run_all(base_config, workdir: str | pathlib.Path, planned) -> None:
    """Trains the planned runs one after the other; finished ones (summary.json) are skipped.

    A line per run says where the experiment stands: `[3/14] training mobilenet_v2_patient`.
    """
    import time

    from experiment import paper
    from trainer import RunDirectory, train_and_evaluate

    started, trained = time.time(), 0
    for number, run in enumerate(planned, start=1):
        directory = paper.run_directory(workdir, run)
        position = f"[{number}/{len(planned)}] {run.name}"
        if RunDirectory(directory).finished():
            logging.info("%s: finished before (summary.json), skipped", position)
            continue
        elapsed = time.time() - started
        pace = f"; {elapsed / trained / 60:.0f} min per run so far" if trained else ""
        logging.info("%s: training in %s%s", position, directory, pace)
        train_and_evaluate(paper.run_config(base_config, run), str(directory))
        trained += 1
    logging.info(
        "%d runs: %d trained now, %d finished before", len(planned), trained, len(planned) - trained
    )


def main(argv):
    if len(argv) > 1:
        raise cli.UserError(f"unexpected arguments {argv[1:]}: every setting is a --flag")
    planned = experiment_plan()
    if not FLAGS.report_only:
        from trainer import config_checks, startup
        from trainer.workdir_lock import WorkdirLock

        config_checks.check(FLAGS.config)
        startup.start(FLAGS.config)
        import jax

        if jax.process_index() == 0:
            with WorkdirLock(FLAGS.workdir):
                run_all(FLAGS.config, FLAGS.workdir, planned)
        else:
            run_all(FLAGS.config, FLAGS.workdir, planned)
        if jax.process_index() != 0:
            return
    command = "python reproduce.py " + " ".join(
        shlex.quote(arg) for arg in sys.argv[1:] if arg != "--report_only"
    )
    from experiment import report

    try:
        path = report.write_report(
            FLAGS.workdir, planned, command, redraw_run_curves=FLAGS.report_only
        )
    except FileNotFoundError as error:
        raise cli.UserError(str(error)) from None
    figures = sorted(p.name for p in path.parent.glob("*.png"))
    redrawn = ", and each run's curves.png" if FLAGS.report_only else ""
    print(f"wrote {path.name} and {', '.join(figures)}{redrawn} to {path.parent}")


if __name__ == "__main__":
    define_flags()
    cli.run(main)
