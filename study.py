"""Studies beyond the paper on an experiment's finished runs: slide context, ensembles, calibration,
and a learning curve, written to one Markdown report.

    python study.py --workdir=/tmp/real_245 --output=/tmp/real_245/study.md

Or, with run directories named on the command line, paired differences with thresholds re-chosen
in every resample and the slide-level agreement of called against labelled IDC area
(`experiment/held_out.py`), with a Bland-Altman figure (--figure, default bland_altman.png beside
--output) and the figures as JSON (--output with .json):

    R=results/real_245; python study.py --output=$R/slide_agreement.md \
        --cv=MobileNetV1=$R/mobilenet_v1_patient,$R/v1_slides_a,$R/v1_slides_b \
        --cv=MobileNetV2=$R/mobilenet_v2_patient,$R/v2_slides_a,$R/v2_slides_b \
        --patient_split=MobileNetV1=$R/mobilenet_v1_patient \
        --patient_split=MobileNetV2=$R/mobilenet_v2_patient

--cv: one network's runs whose held-out whole slides are disjoint (a cross-validation over
slides); --patient_split: runs of one split (the same test patients), the first the reference.

The frozen test (results/frozen_test/PROTOCOL.md): its candidates' outputs calibrated and chosen
on validation, the test scored once (`experiment/frozen_test.py`), with reliability.png beside:

    python study.py --frozen_test=results/frozen_test --output=results/frozen_test/report.md

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
    flags.DEFINE_multi_string(
        "cv", [], "NAME=DIR,DIR,...: one network's cross-validation over whole slides (runs)."
    )
    flags.DEFINE_multi_string(
        "patient_split", [], "NAME=DIR: a run of one patient split (the first: the reference)."
    )
    flags.DEFINE_string("figure", None, "The Bland-Altman PNG (default: beside --output).")
    flags.DEFINE_string(
        "frozen_test", None, "The frozen test's folder: one folder per candidate run."
    )
    flags.mark_flags_as_required(["output"])


def _named(values: list[str], flag: str) -> dict[str, list[str]]:
    """NAME=DIR[,DIR...] flag values, in order; every DIR must be a run folder."""
    named = {}
    for value in values:
        name, _, directories = value.partition("=")
        if not name or not directories:
            raise cli.UserError(f"--{flag}={value}: expected NAME=DIR[,DIR...]")
        named[name] = directories.split(",")
        for directory in named[name]:
            if not pathlib.Path(directory).is_dir():
                raise cli.UserError(f"--{flag}: {directory} is not a folder")
    return named


def _held_out(output: pathlib.Path) -> None:
    import json  # noqa: PLC0415

    from experiment import held_out, held_out_tables  # noqa: PLC0415

    cv = _named(FLAGS.cv, "cv")
    split = {name: dirs[0] for name, dirs in _named(FLAGS.patient_split, "patient_split").items()}
    figure = pathlib.Path(FLAGS.figure or output.parent / "bland_altman.png")
    markdown, data = held_out.render(cv, split, figure)
    output.write_text(markdown)
    output.with_suffix(".json").write_text(
        json.dumps(held_out_tables.as_json(data), indent=1) + "\n"
    )
    print(f"wrote {output}, {output.with_suffix('.json')}" + (f", {figure}" if cv else ""))


def main(argv):
    if len(argv) > 1:
        raise cli.UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.frozen_test:
        if FLAGS.workdir or FLAGS.cv or FLAGS.patient_split:
            raise cli.UserError("--frozen_test alone, without --workdir, --cv or --patient_split")
        if not pathlib.Path(FLAGS.frozen_test).is_dir():
            raise cli.UserError(f"--frozen_test={FLAGS.frozen_test} is not a folder")
        from experiment import frozen_test  # noqa: PLC0415

        pathlib.Path(FLAGS.output).write_text(frozen_test.render(FLAGS.frozen_test))
        print(f"wrote {FLAGS.output}")
        return None
    if FLAGS.cv or FLAGS.patient_split:
        if FLAGS.workdir:
            raise cli.UserError("--workdir or --cv / --patient_split, not both")
        return _held_out(pathlib.Path(FLAGS.output))
    if not FLAGS.workdir:
        raise cli.UserError("--workdir (or --cv / --patient_split) is required")
    if not pathlib.Path(FLAGS.workdir).is_dir():
        raise cli.UserError(f"--workdir={FLAGS.workdir} is not a folder")
    from experiment import study

    pathlib.Path(FLAGS.output).write_text(study.render(FLAGS.workdir))
    print(f"wrote {FLAGS.output}")


if __name__ == "__main__":
    define_flags()
    cli.run(main)
