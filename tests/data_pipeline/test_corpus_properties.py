"""Property-based tests of preprocessing against corrupted corpora (#24).

Whatever corpus a user feeds `python -m data_pipeline.preprocess`, it either succeeds, counting
what the file holds, or ends with one `error:` line that names the file and the line (a line
that really is wrong); never a traceback, and an earlier output at --output_dir is left byte for
byte as it was. The corpora are drawn by `tests/corrupt_corpora.py`, which also reads them
independently, from the corpus docstring. The examples are bounded and seeded (derandomized).
"""

import hashlib
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from data_pipeline import corpus
from data_pipeline.manifest import MANIFEST_NAME
from data_pipeline.preprocess import preprocess
from data_pipeline.workers import WorkerDiedError
from tests import corrupt_corpora as cc

REPO = pathlib.Path(__file__).resolve().parents[2]
# What `python -m data_pipeline.preprocess` reports as one `error: ...` line (its `main`); any
# other exception would reach the user as a traceback.
USER_ERRORS = (corpus.CorpusError, ValueError, OSError, WorkerDiedError)
SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.large_base_example])
BASE = "中 B-LOC\n国 I-LOC\n人 O\n\n张 B-PER\n三 I-PER\n说 O\n"


def tree_digest(directory: pathlib.Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `directory`."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, bert_chinese_dir):
    """A scratch root, the tokenizer, and an earlier, finished output to copy into examples."""
    root = tmp_path_factory.mktemp("corpus_properties")
    (root / "base.txt").write_text(BASE, encoding="utf-8")
    earlier = root / "earlier"
    preprocess({"train": str(root / "base.txt")}, earlier, str(bert_chinese_dir),
               max_seq_length=16, stride=4, num_workers=0)
    return SimpleNamespace(root=root, earlier=earlier, tokenizer=str(bert_chinese_dir))


def run_case(workspace, case: cc.CorpusCase, earlier: bool):
    with tempfile.TemporaryDirectory(dir=workspace.root) as scratch:
        scratch = pathlib.Path(scratch)
        paths = {}
        for split, data in case.files.items():
            paths[split] = scratch / f"{split}.txt"
            paths[split].write_bytes(data)
        output = scratch / "out"
        before = None
        if earlier:
            shutil.copytree(workspace.earlier, output)
            before = tree_digest(output)
        try:
            manifest = preprocess({split: str(p) for split, p in paths.items()}, output,
                                  workspace.tokenizer, max_seq_length=16, stride=4,
                                  input_format=case.input_format, on_invalid=case.on_invalid,
                                  overwrite=True, num_workers=0)
        except USER_ERRORS as error:
            event(f"error: {re.sub(r'^.*?:[0-9]+: |^/[^ ]*: ', '', str(error))[:28]}")
            cc.check_error_message(f"error: {error}", case, paths)
            # Nothing written, and nothing of the earlier output touched.
            assert (tree_digest(output) if earlier else output.exists()) == (before or False)
            assert sorted(p.name for p in scratch.iterdir()) == sorted(
                [p.name for p in paths.values()] + (["out"] if earlier else []))
            return
        event("success")
        for split, path in paths.items():
            reading = cc.expected_reading(case.files[split], cc.format_of(case))
            assert not reading.error_lines, f"{split} was accepted with bad lines {reading}"
            counts = manifest["splits"][split]["counts"]
            assert manifest["splits"][split]["source"]["format"] == reading.format
            assert counts["sentences"] == len(reading.sentences)
            assert counts["tag_counts"] == dict(reading.tag_counts)
        shards = {shard["file"] for split in manifest["splits"].values()
                  for shard in split["shards"]}
        assert set(os.listdir(output)) == shards | {MANIFEST_NAME}


def regression(files: dict[str, bytes], base_format: str = "char", input_format: str = "auto",
               on_invalid: str = "repair"):
    """An explicit example (a bug the property found), run before the drawn ones."""
    return example(case=cc.CorpusCase(base_format, input_format, on_invalid, files, ["fixed"]),
                   earlier=True)


@settings(max_examples=60, **SETTINGS)
@given(case=cc.corpus_cases(), earlier=st.booleans())
# str.split() split `中\u3000O` into the token 中 and the tag O: accepted, where U+3000 is a
# character and the line has one column.
@regression({"train": "中 O\n中\u3000O\n".encode()}, input_format="char")
@regression({"train": "中 O\n\n中\u2028B-LOC\n".encode()})
# A line of a megabyte became an error message of a megabyte (the line or token quoted whole).
@regression({"train": b"a" * cc.HUGE + b" O\n"}, input_format="char")
@regression({"train": b"EU NNP O\n" + b" x" * cc.HUGE + b"\n"}, "conll")
# Files detected as different formats: the message named neither file.
@regression({"train": b"O\n\n", "dev": "中 O\n\n".encode()})
def test_preprocessing_succeeds_or_names_the_file_and_line(workspace, case, earlier):
    run_case(workspace, case, earlier)


# The real command, in a fresh process, with an error found in a worker process (pickled back)
# and one found in this process: one `error:` line, exit status 2, no traceback, and the earlier
# output at --output_dir (replaced only by a finished one) is left as it was.
CLI_CASES = {
    "a worker's scan": ({"train": BASE.encode(), "dev": "中 O\n\n".encode() + b"\xff\xfe O\n"},
                        ["--input_format=char", "--num_workers=1"], "dev", 3, "invalid UTF-8"),
    "this process": ({"train": (BASE + "\n" + "中" * cc.HUGE + " O\n").encode()},
                     ["--num_workers=0"],
                     "train", 9, "(1,048,576 characters), but the file is read in the character"),
}


@pytest.mark.parametrize("name", sorted(CLI_CASES))
def test_the_command_prints_one_error_line(workspace, tmp_path, name):
    files, flags, split, line, words = CLI_CASES[name]
    paths = {}
    for each, data in files.items():
        paths[each] = tmp_path / f"{each}.txt"
        paths[each].write_bytes(data)
    output = tmp_path / "out"
    shutil.copytree(workspace.earlier, output)
    before = tree_digest(output)
    done = subprocess.run(
        [sys.executable, "-m", "data_pipeline.preprocess", *flags, f"--output_dir={output}",
         f"--tokenizer={workspace.tokenizer}", "--max_seq_length=16", "--stride=4",
         "--overwrite", *(f"--{each}={path}" for each, path in paths.items())],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr + done.stdout
    errors = [text for text in done.stderr.splitlines() if text.startswith("error:")]
    assert errors == [done.stderr.splitlines()[-1]], done.stderr[-3000:]
    assert errors[0].startswith(f"error: {paths[split]}:{line}: "), errors
    assert words in errors[0] and len(errors[0]) < 400, errors
    assert tree_digest(output) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", *(
        p.name for p in paths.values())])
