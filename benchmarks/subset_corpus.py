"""A random subset of a corpus file's sentences, in file order (the 4,000-sentence studies).

    python benchmarks/subset_corpus.py --sentences=4000 --output=/tmp/pd_train_4k.train

Sentences are the blank-line-separated blocks of the input (one `char tag` line per character,
as every corpus format this project reads); the pick is `random.seed(seed)`,
`random.sample(range(number of blocks), sentences)`, sorted, which is the subset of
docs/finetune_4k_study.md. The output is written whole to OUTPUT.partial and renamed.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import random
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # when run as a script
from trainer.config import resolve_input_path  # noqa: E402  (../shared, or $TAGGER_SHARED_DIR)

DEFAULT_INPUT = "../shared/data/people_daily_proxy_train/example.train"


def sentence_blocks(text: str) -> list[str]:
    """The corpus' sentences: its blank-line-separated blocks."""
    return [block for block in text.split("\n\n") if block.strip()]


def count_sentences(text: str) -> int:
    return len(sentence_blocks(text))


def subset_text(text: str, sentences: int, seed: int = 0, name: str = "<corpus>") -> str:
    blocks = sentence_blocks(text)
    if not 0 < sentences <= len(blocks):
        raise ValueError(f"{name}: asked for {sentences} sentences, the file has {len(blocks)}")
    # random.Random(seed).sample draws what random.seed(seed); random.sample(...) does.
    pick = sorted(random.Random(seed).sample(range(len(blocks)), sentences))
    return "\n\n".join(blocks[i].strip("\n") for i in pick) + "\n\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", default=DEFAULT_INPUT,
                        help="relative paths resolve as the trainer's flags do")
    parser.add_argument("--sentences", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    source = pathlib.Path(resolve_input_path(args.input))
    if not source.is_file():
        raise SystemExit(f"error: --input={args.input}: no such file ({source})")
    try:
        text = subset_text(source.read_text(encoding="utf-8"), args.sentences, args.seed,
                           name=str(source))
    except ValueError as error:
        raise SystemExit(f"error: --sentences={args.sentences}: {error}") from None
    output = pathlib.Path(args.output)
    partial = output.with_name(output.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, output)
    print(f"wrote {args.sentences} of the sentences of {source} to {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
