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

from trainer import config as config_lib

config_lib.define_flags()


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors caused by the flags, paths or data (not by the code): reported without traceback.

    Called once TensorFlow is imported anyway (by the training loop).
    """
    import tensorflow as tf

    from data_pipeline.corpus import CorpusError
    from data_pipeline.dataset import ShardError
    from trainer.checkpointing import DivergenceError, RunDirectoryError
    from trainer.cache import DataError
    from trainer.legacy_checkpoint import LegacyCheckpointError

    return (config_lib.ConfigError, RunDirectoryError, DivergenceError, CorpusError, ShardError,
            DataError, LegacyCheckpointError, OSError, tf.errors.InvalidArgumentError,
            tf.errors.DataLossError, tf.errors.NotFoundError)


def note_missing_gpu() -> str | None:
    """Looks for GPUs now and, if there are none, logs what that means; returns the note.

    A CUDA build of TensorFlow logs an error-level "failed call to cuInit: ... (303)" the first
    time it looks for devices on a machine without an NVIDIA driver. No setting removes just
    that line (TF_CPP_MIN_LOG_LEVEL=3 hides every C++ error; hiding the GPUs would hide real
    ones), so the devices are looked up here, at a known moment, and our line follows it.
    """
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return None
    note = "no GPU visible to TensorFlow: running on the CPU"
    if tf.sysconfig.get_build_info().get("is_cuda_build"):
        note += ("; a 'failed call to cuInit' error just above, from TensorFlow's CUDA build, "
                 "says only that")
    logging.info(note)
    return note


def describe(error: BaseException) -> str:
    """One line for the user; TensorFlow's op errors lose their graph-node and op trailers."""
    message = getattr(error, "message", None)
    if isinstance(message, str):  # tf.errors.OpError: "msg\n\t [[{{node x}}]] [Op:Y]"
        first = message.strip().splitlines()[0] if message.strip() else type(error).__name__
        return f"{first} ({type(error).__name__} from TensorFlow)"
    return str(error) or type(error).__name__


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        config = config_lib.config_from_flags(flags.FLAGS)
        config_lib.check_run_dir(config)
    except config_lib.ConfigError as error:
        sys.exit(f"error: {error}")
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
    app.run(main)


if __name__ == "__main__":
    run()
