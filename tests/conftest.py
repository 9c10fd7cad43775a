"""Shared pytest fixtures.

Tests that need the read-only corpora and models find them in `../shared` (relative to the repo
root) or in the directory named by `TAGGER_SHARED_DIR`. Outside CI they skip with a message when
neither exists; with `CI=true` they fail instead, so CI can never pass by skipping them.
"""

import os
import pathlib

import pytest

import models  # noqa: F401  (chooses Keras 2 for tf.keras: models/__init__.py)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def find_shared_dir() -> pathlib.Path | None:
    """Returns the shared data directory, or None when it cannot be found."""
    env = os.environ.get("TAGGER_SHARED_DIR")
    candidates = [pathlib.Path(env)] if env else []
    candidates.append(REPO_ROOT.parent / "shared")
    for candidate in candidates:
        if (candidate / "data").is_dir() and (candidate / "models").is_dir():
            return candidate
    return None


@pytest.fixture(scope="session")
def shared_dir() -> pathlib.Path:
    found = find_shared_dir()
    if found is None:
        message = ("shared data not found: set TAGGER_SHARED_DIR or place it at "
                   f"{REPO_ROOT.parent / 'shared'}")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + " (CI=true: tests that need it fail instead of skipping)")
        pytest.skip(message)
    return found


@pytest.fixture(scope="session")
def e5_dir(shared_dir) -> pathlib.Path:
    return shared_dir / "models" / "multilingual-e5-small-zh"


@pytest.fixture(scope="session")
def bert_chinese_dir(shared_dir) -> pathlib.Path:
    return shared_dir / "models" / "bert-base-chinese-vocab"


@pytest.fixture(scope="session")
def people_daily_dir(shared_dir) -> pathlib.Path:
    return shared_dir / "data" / "people_daily"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, people_daily_dir, bert_chinese_dir):
    """(paths, manifest_dir, tokenizer_dir): the tiny corpus preprocessed with the bert-base-chinese
    vocab, once per test module (a module may write caches beside it)."""
    from tests import trainer_testing as tt

    out = tmp_path_factory.mktemp("tiny")
    paths, manifest_dir = tt.preprocess_tiny(people_daily_dir, bert_chinese_dir, out)
    return paths, manifest_dir, bert_chinese_dir
