"""Helpers for the trainer tests: a tiny corpus cut from People's Daily dev, preprocessed once per
session with the bert-base-chinese vocabulary, a tiny random BERT, and a way to run
`python -m trainer.main` in a fresh process (needed to split the CPU into logical devices,
for multi-worker runs, and to keep op determinism out of the pytest process)."""

import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
# A script prefix for `python -I`: makes this project (and transformers, tokenizers) impossible to
# import, as where an export is served by plain TensorFlow.
BLOCK_PROJECT = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("trainer", "models", "data_pipeline", "serving", "tests",
                                  "transformers", "tokenizers"):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
try:
    import trainer
except ImportError:
    pass
else:
    raise SystemExit("the project is importable")
"""


def tag_text_without_the_project(export_dir, lines: list[str], tmp_path: pathlib.Path, *,
                                 imports: str = "") -> tuple[dict, pathlib.Path, dict]:
    """Runs the export's `tag_text` on `lines` in `python -I` with this project (and
    transformers, tokenizers) blocked, from a directory of its own.

    Returns:
      (its outputs as JSON values, that directory, the environment it ran in).
    """
    outputs = tmp_path / "outputs.json"
    script = tmp_path / "serve.py"
    script.write_text(BLOCK_PROJECT + textwrap.dedent(f"""
        import json
        import tensorflow as tf
        {imports}
        tag_text = tf.saved_model.load({str(export_dir)!r}).signatures["tag_text"]
        out = tag_text(text=tf.constant({lines!r}))
        json.dump({{k: v.numpy().tolist() for k, v in out.items()}}, open({str(outputs)!r}, "w"),
                  default=lambda b: b.decode())
    """), encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TF_USE_LEGACY_KERAS")}
    result = subprocess.run([sys.executable, "-I", str(script)], cwd=elsewhere, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(outputs.read_text()), elsewhere, env


TINY_BERT = dict(vocab_size=21128, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=64, max_position_embeddings=128)


def write_tiny_corpus(people_daily_dir, out_dir, *, train=300, dev=100, test=100):
    """Splits the first sentences of People's Daily dev into tiny train/dev/test files."""
    text = (pathlib.Path(people_daily_dir) / "example.dev").read_text(encoding="utf-8")
    sentences = [s for s in text.split("\n\n") if s.strip()]
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    start = 0
    for split, count in (("train", train), ("dev", dev), ("test", test)):
        paths[split] = out_dir / f"{split}.txt"
        paths[split].write_text("\n\n".join(sentences[start:start + count]) + "\n",
                                encoding="utf-8")
        start += count
    return paths


def preprocess_tiny(people_daily_dir, tokenizer_dir, out_dir, *, max_seq_length=64, stride=16):
    """The tiny corpus preprocessed in-process (no worker pool: it is a few hundred sentences)."""
    from data_pipeline.preprocess import preprocess

    paths = write_tiny_corpus(people_daily_dir, pathlib.Path(out_dir) / "corpus")
    manifest_dir = pathlib.Path(out_dir) / "shards"
    preprocess({k: str(v) for k, v in paths.items()}, manifest_dir, str(tokenizer_dir),
               max_seq_length=max_seq_length, stride=stride, num_workers=0)
    return paths, manifest_dir


def tiny_args(paths, manifest_dir, tokenizer_dir, run_dir, **overrides):
    """Flags for a fast tiny-BERT run on the preprocessed tiny corpus."""
    values = dict(train_file=paths["train"], dev_file=paths["dev"], test_file=paths["test"],
                  manifest=manifest_dir, tokenizer=tokenizer_dir, pretrained="",
                  encoder_config=json.dumps(TINY_BERT), max_seq_length=64, stride=16,
                  hidden_layers="concat", num_hidden_layers_used=2, bilstm_layers=1,
                  bilstm_units=16, head="crf", head_learning_rate=5e-3, batch_size=8,
                  train_steps=6, steps_per_loop=3, log_every=3, checkpoint_every=3,
                  eval_batch_size=32, run_dir=run_dir, progress_bar=False, export=False)
    # Feature caches of frozen runs go beside the run, not into the repo's data_cache/.
    values["data_cache_dir"] = pathlib.Path(run_dir).parent / "data_cache"
    # float32 whatever the machine: `auto` would pick bf16 on AVX512_BF16 CPUs only, and the
    # comparisons between runs (mirrored vs one device, resumed vs not) are float32 tolerances.
    values["mixed_precision"] = "none"
    values.update(overrides)
    args = []
    for name, value in values.items():
        if isinstance(value, bool):
            args.append(f"--{name}" if value else f"--no{name}")
        else:
            args.append(f"--{name}={value}")
    return args


def make_config(tiny, run_dir, **overrides):
    """The TrainConfig of a tiny run (the `tiny` fixture's data) with `overrides` as flags."""
    from trainer import config as config_lib

    paths, manifest_dir, tokenizer = tiny
    return config_lib.parse_flags(tiny_args(paths, manifest_dir, tokenizer, run_dir, **overrides))


def run_main(args, *, env=None, timeout=300, check=True):
    """Runs `python -m trainer.main ARGS` from the repo root; returns the CompletedProcess."""
    full_env = dict(os.environ, **(env or {}))
    result = subprocess.run([sys.executable, "-m", "trainer.main", *map(str, args)], cwd=REPO,
                            env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"trainer.main exited {result.returncode}:\n{result.stderr[-5000:]}")
    return result


# A line at WARNING level or above (issue #24): absl's Python format ("W1207 15:12:13.86 ..."),
# absl's C++ format before absl::InitializeLog ("E0000 00:00:1796656329.58 ...") and its
# "WARNING: All log messages before absl::InitializeLog() ...", the standard library's
# ("WARNING:absl:", "ERROR:..."), tf_logging's ("WARNING:tensorflow:"), Python warnings
# ("file.py:3: UserWarning: ...") and tracebacks.
LOUD_LINE = re.compile(r"^(?:[WEF]\d{4} \d\d:\d\d:[\d.]+ |WARNING|ERROR|CRITICAL"
                       r"|\S+:\d+: \w*Warning: |Traceback )")


def loud_lines(output):
    """The lines of `output` that LOUD_LINE matches."""
    return [line for line in output.splitlines() if LOUD_LINE.match(line)]


def train_log(run_dir):
    lines = (pathlib.Path(run_dir) / "train_log.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def checkpoint_weights(run_dir, prefix="model/"):
    """{variable path: value} of the model in the latest checkpoint of a run."""
    import tensorflow as tf

    path = tf.train.latest_checkpoint(str(pathlib.Path(run_dir) / "checkpoints"))
    assert path, f"no checkpoint in {run_dir}"
    reader = tf.train.load_checkpoint(path)
    names = [n for n in reader.get_variable_to_shape_map()
             if n.startswith(prefix) and ".OPTIMIZER_SLOT" not in n]
    return {name: np.asarray(reader.get_tensor(name)) for name in names}


def max_relative_difference(a, b):
    worst = 0.0
    for name in a:
        scale = max(float(np.max(np.abs(a[name]))), 1e-6)
        worst = max(worst, float(np.max(np.abs(a[name] - b[name]))) / scale)
    return worst
