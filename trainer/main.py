"""Train and evaluate a tagger: `python -m trainer.main --flagfile=configs/frozen.flags`.

Flags are documented in `trainer/config.py` (or `--helpfull`); shipped flagfiles live in
`configs/`. Flags given after a `--flagfile` override it. Run from the repository root: nested
`--flagfile=configs/...` lines are relative to it.

Bad flags, paths and data end with `error: ...` (naming the flag, or the file and line) and exit
status 1, never a traceback. Flags, input paths, `--manifest` and the run directory's config are
checked before TensorFlow is imported.
"""

import sys

from absl import app, flags, logging

from data_pipeline import tensorflow_logs
from data_pipeline.cli import absl_flags_parser, unexpected_arguments
from trainer import config as config_lib

config_lib.define_flags()


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors caused by the flags, paths or data (not by the code): reported without traceback.

    Called once TensorFlow is imported anyway (by the training loop).
    """
    import tensorflow as tf

    from data_pipeline.corpus import CorpusError
    from data_pipeline.dataset import ShardError
    from data_pipeline.workers import WorkerDiedError
    from trainer.checkpointing import DivergenceError, RunDirectoryError
    from trainer.cache import DataError
    from trainer.legacy_checkpoint import LegacyCheckpointError

    # ResourceExhaustedError: out of memory, e.g. for a --batch_size or layer size too large.
    return (config_lib.ConfigError, RunDirectoryError, DivergenceError, CorpusError, ShardError,
            DataError, WorkerDiedError, LegacyCheckpointError, OSError,
            tf.errors.InvalidArgumentError, tf.errors.DataLossError, tf.errors.NotFoundError,
            tf.errors.ResourceExhaustedError)


def note_missing_gpu() -> str | None:
    """Looks for GPUs now and, if there are none, logs what that means; returns the note.

    A CUDA build of TensorFlow logs an error-level "failed call to cuInit: ... (303)" the first
    time it looks for devices on a machine without an NVIDIA driver (inside app.run: while it is
    imported). data_pipeline/tensorflow_logs.py leaves that line out, at the import or here,
    when libcuda.so.1 cannot be loaded, and the note says it instead, at INFO level.
    """
    if tensorflow_logs.find_gpus():
        return None
    note = "no GPU visible to TensorFlow: running on the CPU"
    if tensorflow_logs.cuda_without_driver():
        note += " (no NVIDIA driver: libcuda.so.1 cannot be loaded)"
    logging.info(note)
    return note


def describe(error: BaseException) -> str:
    """One line for the user; TensorFlow's op errors lose their graph-node and op trailers."""
    message = getattr(error, "message", None)
    if isinstance(message, str):  # tf.errors.OpError: "msg\n\t [[{{node x}}]] [Op:Y]"
        from data_pipeline.dataset import op_error_line

        first = op_error_line(error)
        if type(error).__name__ == "ResourceExhaustedError":
            first += " (out of memory: try a smaller --batch_size or model)"
        return f"{first} ({type(error).__name__} from TensorFlow)"
    return str(error) or type(error).__name__


def main(argv) -> None:
    if len(argv) > 1:
        sys.exit(f"error: {unexpected_arguments(argv[1:], 'python -m trainer.main')}")
    try:
        config = config_lib.config_from_flags(flags.FLAGS)
        config_lib.check_run_dir(config)
    except config_lib.ConfigError as error:
        sys.exit(f"error: {error}")
    tensorflow_logs.import_tensorflow()  # first, so that its import-time noise is left out
    from trainer.loop import train_and_evaluate

    user_errors = _user_errors()
    logging.set_verbosity(logging.INFO)
    note_missing_gpu()
    try:
        # Bad corpus lines or tokenizers surface as one line: the loop preprocesses (or finds
        # the shards) before it writes config.json into the run directory or, with
        # --overwrite, empties it.
        results = train_and_evaluate(config, config.run_dir)
    except user_errors as error:
        sys.exit(f"error: {describe(error)}")
    if results.get("stopped"):
        sys.exit(128 + 15)  # stopped by SIGTERM after saving a checkpoint
    if "test" in results:
        print(f"step {results['step']}: dev f1 {results['dev']['f1']:.4f}, "
              f"test f1 {results['test']['f1']:.4f} ({config.run_dir})")


def run() -> None:
    """Console entry point (`tagger-train`)."""
    app.run(main, flags_parser=absl_flags_parser("python -m trainer.main", exit_code=1))


if __name__ == "__main__":
    run()
