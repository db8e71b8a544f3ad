"""The training library: everything between a config and a trained, evaluated network.

    from trainer import train_and_evaluate
    summary = train_and_evaluate(config, workdir)   # what main.py runs

The package, in the order a run uses it:
  cli.py          the programs' door: flags parsed, one line per user mistake, a quiet console
  config_checks.py a config refused before it runs: bad values, a resume that changes the run
  workdir_lock.py one workdir, one run: the lock a live run holds (process 0 for all)
  startup.py      a program's start-up: multi-process initialisation, host-memory settings
  state.py        the network, optimiser and TrainState a step reads and writes
  steps.py        the jitted pure functions: loss and gradients, train step, eval step
  compiled.py     state + optimiser + jitted steps of a config on a mesh, built in one place
  run_log.py      what a run tells the console as it starts (data and why, network, devices)
  loop.py         train_and_evaluate: epochs, evaluation, checkpoints, resume
  evaluate.py     evaluation loops on the host, precise-BN recalibration
  summary.py      summary.json, assembled from the test split's P(IDC) and the run's record
  checkpoints.py  orbax checkpoints: the latest k and the best by validation
  writers.py      scalars to metrics.jsonl / TensorBoard, history.csv, curves, console progress
  rundir.py       the run directory: the files a run writes, and reading them back

Dependencies run one way: the programs, `experiment` (the paper's runs and report) and
`idc_inference` (only to open a training run's workdir) import this package, which imports
`evaluation` (metrics, intervals, test-time views), `mobilenets` and `input_pipeline` (data,
batches on the device mesh), never the reverse.
"""

__all__ = ["Run", "RunDirectory", "train_and_evaluate"]


def __getattr__(name: str):
    # Imported on first use, so that `from trainer import cli` (what a program runs before its
    # flags are parsed) does not load JAX: a mistyped flag is reported in a fraction of a second.
    if name == "train_and_evaluate":
        from trainer.loop import train_and_evaluate

        return train_and_evaluate
    if name in ("Run", "RunDirectory"):
        from trainer import rundir

        return getattr(rundir, name)
    raise AttributeError(f"module 'trainer' has no attribute {name!r}")
