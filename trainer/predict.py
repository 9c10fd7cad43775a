"""Old name of `python -m serving.predict` (the command moved to the serving package)."""
import sys

from serving.predict import main  # noqa: F401

if __name__ == "__main__":
    print("note: `python -m trainer.predict` is now `python -m serving.predict`", file=sys.stderr)
    sys.exit(main())
