"""The mistakes a user of the inference library can make, each with a message that says what to
do: the programs (predict.py, heatmap.py, map_slide.py) print them as one line with exit status 2
(`USER_ERRORS`, given to `trainer.cli.run`). Plain Python, so a program can name them before
JAX starts. Any other exception is a bug."""


class ModelSourceError(FileNotFoundError):
    """`load` was pointed at something that is not a training run or a weights file."""


class ModelArgumentError(ValueError):
    """A threshold or checkpoint that the model cannot take."""


class WeightsError(ValueError):
    """An inference-weights file that cannot be used; the message names the file."""


class ContextStageError(ValueError):
    """A weights record's context stage that this code cannot use."""


class CalibrationError(ValueError):
    """A weights record's calibration that this code cannot use."""


USER_ERRORS = (
    ModelSourceError,
    ModelArgumentError,
    WeightsError,
    ContextStageError,
    CalibrationError,
)
