"""Downloading the public corpora, checked against the git blob ids of their upstream files.

    python -m data_pipeline.download --corpus=people_daily --output_dir=data/people_daily \\
        [--splits=dev,test] [--base_url=MIRROR]

People's Daily NER (the corpus kashgari's `ChineseDailyNerCorpus` loads) comes from the GitHub
repository zjy-ucas/ChineseNER at a fixed commit. Each file is checked with the id git gives it
(`git hash-object FILE`), so a truncated, LFS-pointer or altered copy is refused. Files are written
under a temporary name and renamed when complete and checked: an interrupted download never
leaves a file that looks finished.

Flags are absl flags (`--helpfull` lists them); a bad or missing flag, a failed download or a
file that is not the expected one ends with `error: ...` and exit status 2.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import sys
import urllib.request
from collections.abc import Callable

from absl import flags

from data_pipeline.cli import parse_flags

CORPORA = {
    "people_daily": {
        "base_url": ("https://raw.githubusercontent.com/zjy-ucas/ChineseNER/"
                     "48e1007e60194c13377f8ce612c505d484b18c7d/data/"),
        "files": {
            "train": ("example.train", "388fee7ca0b548fe2c35ff176a0c4412b0ca2329"),
            "dev": ("example.dev", "ba83924f26353970a89cc5d266e98de13ff1eb8d"),
            "test": ("example.test", "a047f4ed6dcc7940640123a66a4acccfa8437d6b"),
        },
    },
}


class DownloadError(RuntimeError):
    """A download failed or its content is not the expected file."""


def git_blob_id(path: str | os.PathLike) -> str:
    """The id `git hash-object` gives a file: sha1 of b"blob <size>\\0" + its bytes."""
    path = pathlib.Path(path)
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_corpus(name: str, output_dir: str | os.PathLike, *, splits=None,
                    base_url: str | None = None, timeout: float = 60.0,
                    log: Callable[[str], None] = lambda message: None) -> dict[str, pathlib.Path]:
    """Downloads a corpus's files into `output_dir`, each checked against its git blob id.

    Args:
      name: a key of CORPORA.
      output_dir: created if missing. Files already there with the right blob id are kept.
      splits: which splits (default: all).
      base_url: overrides the corpus's URL (a mirror, or a `file://` directory).
      timeout: seconds per request.
      log: called with progress messages.

    Returns:
      {split: path of the checked file}.

    Raises:
      ValueError: unknown corpus or split.
      DownloadError: the network failed or a file's content is not the expected one (the message
        names the URL and both ids); nothing is left at the file's final name.
    """
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}; known: {sorted(CORPORA)}")
    corpus = CORPORA[name]
    wanted = list(splits or corpus["files"])
    unknown = [split for split in wanted if split not in corpus["files"]]
    if unknown:
        raise ValueError(f"corpus {name!r} has no split {unknown}; "
                         f"it has {sorted(corpus['files'])}")
    output_dir = pathlib.Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    base = base_url or corpus["base_url"]
    paths = {}
    for split in wanted:
        filename, blob_id = corpus["files"][split]
        target = output_dir / filename
        paths[split] = target
        if target.is_file() and git_blob_id(target) == blob_id:
            log(f"{target}: present and checked")
            continue
        url = base.rstrip("/") + "/" + filename
        partial = target.with_name(target.name + ".partial")
        log(f"downloading {url}")
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, \
                    open(partial, "wb") as out:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
            got = git_blob_id(partial)
            if got != blob_id:
                raise DownloadError(f"{url}: content has git blob id {got}, expected {blob_id} "
                                    f"(truncated, an LFS pointer, or another version)")
            os.replace(partial, target)
        except OSError as e:
            raise DownloadError(f"{url}: download failed: {e}") from None
        finally:
            if partial.exists():
                partial.unlink()
        log(f"{target}: downloaded and checked")
    return paths


def define_flags(flag_values: flags.FlagValues) -> None:
    """Declares the command's flags on `flag_values`."""
    f = dict(flag_values=flag_values)
    flags.DEFINE_enum("corpus", "people_daily", sorted(CORPORA), "The corpus to download.", **f)
    flags.DEFINE_string("output_dir", None, "Where the files go (created if missing).",
                        required=True, **f)
    flags.DEFINE_list("splits", None, "Comma-separated splits to download, e.g. dev,test "
                      "(default: all).", **f)
    flags.DEFINE_string("base_url", None, "A mirror of the corpus files (or a file:// "
                        "directory).", **f)


def main(argv: list[str] | None = None) -> None:
    """Runs the command line (argv without the program name; default sys.argv[1:]).

    Raises:
      SystemExit: 2 after a bad flag or a failed download (the message printed), 0 after
        --helpfull.
    """
    args = flags.FlagValues()
    define_flags(args)
    parse_flags(args, argv, program="python -m data_pipeline.download",
                description=__doc__)
    try:
        download_corpus(args.corpus, args.output_dir, splits=args.splits, base_url=args.base_url,
                        log=lambda message: print(message, flush=True))
    except (ValueError, DownloadError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
