"""Train and evaluate a tagger: `python -m trainer.main --flagfile=configs/frozen.flags`.

Flags are documented in `trainer/config.py` (or `--helpfull`); shipped flagfiles live in
`configs/`. Flags given after a `--flagfile` override it. Run from the repository root: nested
`--flagfile=configs/...` lines are relative to it.
"""

import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # before TensorFlow is imported

from absl import app, flags, logging  # noqa: E402

from trainer import config as config_lib  # noqa: E402

config_lib.define_flags()


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        config = config_lib.config_from_flags(flags.FLAGS)
    except config_lib.ConfigError as error:
        sys.exit(f"error: {error}")
    from trainer import checkpointing
    from trainer.loop import train_and_evaluate

    logging.set_verbosity(logging.INFO)
    try:
        results = train_and_evaluate(config, config.run_dir)
    except checkpointing.RunDirectoryError as error:
        sys.exit(f"error: {error}")
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
