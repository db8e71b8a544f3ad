"""The training library: everything between a config and a trained, evaluated network.

    from trainer import train_and_evaluate
    summary = train_and_evaluate(config, workdir)   # what main.py runs

The package, in the order a run uses it:
  state.py        the network, optimiser and TrainState a step reads and writes
  steps.py        the jitted pure functions: loss and gradients, train step, eval step
  sharding.py     the `data` mesh over all devices of all processes; multi-process start-up
  loop.py         train_and_evaluate: epochs, evaluation, checkpoints, resume, summary
  evaluate.py     evaluation loops on the host, precise-BN recalibration
  metrics.py      binary-classification metrics of P(IDC) (ROC AUC, balanced accuracy, ...)
  checkpoints.py  orbax checkpoints: the latest k and the best by validation
  writers.py      scalars to clu / console / metrics.jsonl, history.csv, curves
  rundir.py       the run directory: the files a run writes, and reading them back
  inference.py    P(IDC) of PNG files with a trained run (predict.py, heatmap.py)
  slides.py       a patient's patches tiled into slide maps (heatmap.py)
  paper.py        the paper's experiment: its runs and report.md (reproduce.py)

Dependencies run one way: the programs (main.py, predict.py, heatmap.py, reproduce.py) import
this package, which imports `mobilenets` and `input_pipeline`, never the reverse.
"""

from trainer.loop import train_and_evaluate
from trainer.rundir import Run, RunDirectory

__all__ = ["Run", "RunDirectory", "train_and_evaluate"]
