"""Fault injection: kill small training runs at random moments, resume them, compare.

    python benchmarks/fault_injection.py --cycles=10 [--seed=0] [--work_dir=DIR] [--keep]

Trains a small run (character embeddings + BiLSTM + CRF, 300 sentences of People's Daily,
deterministic ops, no dropout) once without interruption as the reference. Then each cycle
starts the same run in a new directory, injects one fault (in turn from FAULTS, at a random
moment), restarts it until it finishes, and checks against the reference:

- the final checkpoint holds bit-identical values (weights, Adam slots, step, input position);
- train_log.jsonl holds each step once, the same steps and losses as the reference;
- the event files hold each (tag, step) once (EventAccumulator), the same ones as the reference;
- no litter: no `ckpt-N_temp/`, no half-swapped best/, no temporary or staging files.

Prints one line per cycle and exits with status 1 if any check failed.
tests/trainer/test_fault_injection.py runs it with 3 cycles. Needs ../shared (or
$TAGGER_SHARED_DIR).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
CHILD_ENV = "TAGGER_FAULT"  # set in a child: "<fault>:<n>"

# fault: where it strikes (cycles take them in this order; CI runs the first three)
FAULTS = {
    "kill": "SIGKILL at a random moment of training",
    "checkpoint_write": "SIGKILL inside a checkpoint write (shards written, not merged)",
    "sigterm": "SIGTERM at a random moment (must save and exit 143)",
    "checkpoint_record": "SIGKILL after a checkpoint's files, before checkpoints/checkpoint "
                         "names it",
    "evaluation": "SIGKILL in the middle of a dev (or the final test) evaluation",
    "best_swap": "SIGKILL between the two renames that replace best/",
    "sigterm_evaluation": "SIGTERM in the middle of a dev (or the final test) evaluation",
}

TRAIN_STEPS, LOG_EVERY, CHECKPOINT_EVERY, EVAL_EVERY = 24, 2, 4, 8


def trainer_flags(corpus: pathlib.Path, run_dir: pathlib.Path, cache: pathlib.Path) -> list[str]:
    shared = os.environ.get("TAGGER_SHARED_DIR") or str(REPO.parent / "shared")
    return [
        "--flagfile=configs/bilstm_crf.flags",
        f"--train_file={corpus / 'train.txt'}", f"--dev_file={corpus / 'dev.txt'}",
        f"--test_file={corpus / 'test.txt'}",
        f"--tokenizer={shared}/models/bert-base-chinese-vocab",
        f"--run_dir={run_dir}", f"--data_cache_dir={cache}",
        "--embedding_dim=32", "--bilstm_units=16", "--batch_size=8", "--max_seq_length=64",
        "--stride=16", "--dropout=0", "--bilstm_dropout=0", "--deterministic",
        # Pinned here, whatever the flagfile says: fast learning (dev F1 rises, so best/ is
        # replaced several times), evaluations every EVAL_EVERY steps, the whole schedule.
        "--encoder_learning_rate=1e-2", "--head_learning_rate=1e-2", "--crf_learning_rate=1e-2",
        "--warmup_proportion=0", "--eval_every_epochs=0", "--early_stopping_patience=0",
        f"--train_steps={TRAIN_STEPS}", "--steps_per_loop=3", f"--log_every={LOG_EVERY}",
        f"--checkpoint_every={CHECKPOINT_EVERY}", f"--eval_every={EVAL_EVERY}",
        "--keep_checkpoints=2", "--eval_batch_size=8", "--noprogress_bar", "--noexport",
    ]


def write_corpus(out: pathlib.Path) -> pathlib.Path:
    shared = pathlib.Path(os.environ.get("TAGGER_SHARED_DIR") or REPO.parent / "shared")
    text = (shared / "data" / "people_daily" / "example.dev").read_text(encoding="utf-8")
    sentences = [s for s in text.split("\n\n") if s.strip()]
    out.mkdir(parents=True, exist_ok=True)
    for split, (start, end) in {"train": (0, 300), "dev": (300, 380),
                                "test": (380, 460)}.items():
        (out / f"{split}.txt").write_text("\n\n".join(sentences[start:end]) + "\n",
                                          encoding="utf-8")
    return out


# ------------------------------------------------------------------------------------------------
# The child: trainer.main with a fault armed
# ------------------------------------------------------------------------------------------------


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _after_calls(count: int, action):
    """A counter: runs `action` at the count-th call of the returned function."""
    calls = {"n": 0}

    def tick():
        calls["n"] += 1
        if calls["n"] == count:
            action()

    return tick


def arm_child(fault: str, count: int) -> None:
    """Installs the fault in this process (a trainer.main about to run)."""
    if fault == "checkpoint_write":
        from tensorflow.python.ops import gen_io_ops

        merge = gen_io_ops.merge_v2_checkpoints
        tick = _after_calls(count, _die)

        def merge_then_maybe_die(*args, **kwargs):
            tick()  # the shards are in ckpt-N_temp/; the merge has not run
            return merge(*args, **kwargs)

        gen_io_ops.merge_v2_checkpoints = merge_then_maybe_die
    elif fault == "checkpoint_record":
        from tensorflow.python.checkpoint import checkpoint_management as cm

        record = cm.CheckpointManager._record_state
        tick = _after_calls(count, _die)

        def maybe_die_then_record(self):
            tick()
            return record(self)

        cm.CheckpointManager._record_state = maybe_die_then_record
    elif fault == "best_swap":
        rename = os.rename
        tick = _after_calls(count, _die)

        def rename_and_maybe_die(src, dst, *args, **kwargs):
            rename(src, dst, *args, **kwargs)
            if str(dst).endswith(".best.old"):
                tick()  # best/ is gone, the new one is not in place yet

        os.rename = rename_and_maybe_die
    elif fault in ("evaluation", "sigterm_evaluation"):
        from trainer import evaluation

        evaluate = evaluation.evaluate
        tick = _after_calls(count, _die if fault == "evaluation"
                            else lambda: os.kill(os.getpid(), signal.SIGTERM))

        class Interrupted:
            def __init__(self, dataset):
                self.dataset = dataset
                self.element_spec = dataset.element_spec

            def __iter__(self):
                for index, batch in enumerate(self.dataset):
                    if index == 3:
                        tick()
                    yield batch

        evaluation.evaluate = lambda model, dataset, *a, **kw: evaluate(
            model, Interrupted(dataset), *a, **kw)


def child_main() -> None:
    fault, count = os.environ.pop(CHILD_ENV).split(":")
    sys.path.insert(0, str(REPO))
    from trainer import main  # defines the flags

    arm_child(fault, int(count))
    sys.argv = ["trainer.main", *sys.argv[1:]]
    main.run()


# ------------------------------------------------------------------------------------------------
# The parent
# ------------------------------------------------------------------------------------------------


def run_trainer(flags: list[str], *, fault: str | None = None, count: int = 0,
                signal_after_logs: int | None = None, signal_number=signal.SIGKILL,
                timeout: float = 600) -> tuple[int, str]:
    """Runs one trainer process; returns (exit status, stderr tail).

    signal_after_logs: send `signal_number` once train_log.jsonl holds that many more lines
    than at the start (plus a random delay of up to 0.3 s).
    """
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    command = [sys.executable, "-m", "trainer.main", *flags]
    if fault:
        env[CHILD_ENV] = f"{fault}:{count}"
        command = [sys.executable, str(pathlib.Path(__file__).resolve()), *flags]
    run_dir = pathlib.Path(next(f for f in flags if f.startswith("--run_dir="))[10:])
    log = run_dir / "train_log.jsonl"
    start_lines = len(log.read_text().splitlines()) if log.exists() else 0
    with tempfile.TemporaryFile("w+") as stderr:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                   stderr=stderr)
        deadline = time.time() + timeout
        try:
            if signal_after_logs is not None:
                while process.poll() is None and time.time() < deadline:
                    lines = len(log.read_text().splitlines()) if log.exists() else 0
                    if lines - start_lines >= signal_after_logs:
                        time.sleep(random.uniform(0, 0.3))
                        process.send_signal(signal_number)
                        break
                    time.sleep(0.02)
            process.wait(timeout=max(deadline - time.time(), 1))
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        stderr.seek(0)
        return process.returncode, stderr.read()[-4000:]


def checkpoint_values(run_dir: pathlib.Path) -> dict:
    import numpy as np
    import tensorflow as tf

    path = tf.train.latest_checkpoint(str(run_dir / "checkpoints"))
    reader = tf.train.load_checkpoint(path)
    skip = ("_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter/.ATTRIBUTES/VARIABLE_VALUE")
    return {name: np.asarray(reader.get_tensor(name))
            for name in reader.get_variable_to_shape_map() if name not in skip}


def event_steps(run_dir: pathlib.Path) -> dict[str, list[int]]:
    from trainer.run_events import RunEvents

    # RUN_DIR and its split directories (train/, dev/, test/), by flat name ("dev/f1").
    accumulator = RunEvents(run_dir, size_guidance={
        "tensors": 0, "scalars": 0, "images": 0})
    return {tag: [event.step for event in accumulator.Tensors(tag)]
            for tag in accumulator.Tags()["tensors"] if not tag.startswith("_hparams_")}


def train_log(run_dir: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]


def litter(run_dir: pathlib.Path, cache: pathlib.Path) -> list[str]:
    found = [str(p.relative_to(run_dir)) for p in run_dir.rglob("*")
             if p.name.endswith(("_temp", ".tmp", ".partial", ".old"))
             or p.name.startswith((".best", "."))]
    found += [str(p) for p in cache.iterdir() if p.name.startswith(".")]
    return found


def compare(reference: pathlib.Path, run_dir: pathlib.Path, cache: pathlib.Path, *,
            same_losses: bool = True) -> list[str]:
    """What differs from the reference run (empty when nothing).

    same_losses=False: compare the logged steps but not their losses. After a SIGTERM between
    two log boundaries, the first record of the resumed run averages only the steps it ran.
    """
    problems = []
    expected, got = checkpoint_values(reference), checkpoint_values(run_dir)
    if expected.keys() != got.keys():
        problems.append(f"checkpoint variables differ: {sorted(expected.keys() ^ got.keys())}")
    differing = [name for name in expected if name in got
                 and not (expected[name] == got[name]).all()]
    if differing:
        problems.append(f"{len(differing)} checkpoint values differ, e.g. {differing[:3]}")
    log, reference_log = train_log(run_dir), train_log(reference)
    steps = [record["step"] for record in log]
    if len(steps) != len(set(steps)):
        problems.append(f"train_log.jsonl repeats steps: {steps}")
    if steps != [record["step"] for record in reference_log]:
        problems.append(f"train_log.jsonl has steps {steps}, the reference others")
    elif same_losses and [r["loss"] for r in log] != [r["loss"] for r in reference_log]:
        problems.append("train_log.jsonl losses differ from the reference")
    events, reference_events = event_steps(run_dir), event_steps(reference)
    repeated = {tag: s for tag, s in events.items() if len(s) != len(set(s))}
    if repeated:
        problems.append(f"event files repeat steps: {repeated}")
    if events != reference_events:
        differ = sorted(tag for tag in events.keys() | reference_events.keys()
                        if events.get(tag) != reference_events.get(tag))
        problems.append(f"event steps differ from the reference for {differ[:5]}")
    left = litter(run_dir, cache)
    if left:
        problems.append(f"litter: {left}")
    return problems


def cycle(index: int, fault: str, reference: pathlib.Path, corpus: pathlib.Path,
          cache: pathlib.Path, work: pathlib.Path) -> tuple[str, list[str]]:
    """One faulted run, resumed to the end. Returns (what happened, problems)."""
    run_dir = work / f"cycle-{index:03d}-{fault}"
    flags = trainer_flags(corpus, run_dir, cache)
    logged = TRAIN_STEPS // LOG_EVERY
    if fault in ("kill", "sigterm"):
        after = random.randint(1, logged - 1)
        number = signal.SIGKILL if fault == "kill" else signal.SIGTERM
        code, stderr = run_trainer(flags, signal_after_logs=after, signal_number=number)
        what = f"{signal.Signals(number).name} after {after} log lines"
    else:
        # Checkpoints: every CHECKPOINT_EVERY steps, plus best/ writes (through
        # merge_v2_checkpoints too); evaluations: TRAIN_STEPS / EVAL_EVERY - 1 during training,
        # then dev and test.
        limit = {"checkpoint_write": TRAIN_STEPS // CHECKPOINT_EVERY,
                 "checkpoint_record": TRAIN_STEPS // CHECKPOINT_EVERY,
                 "best_swap": 1,  # later ones only when dev F1 improves: not in 24 steps
                 "evaluation": TRAIN_STEPS // EVAL_EVERY + 1,
                 "sigterm_evaluation": TRAIN_STEPS // EVAL_EVERY + 1}[fault]
        count = random.randint(1, limit)
        code, stderr = run_trainer(flags, fault=fault, count=count)
        what = f"at the {count}. occasion"
    problems = []
    expected = {"kill": -signal.SIGKILL, "sigterm": 128 + signal.SIGTERM,
                "sigterm_evaluation": 128 + signal.SIGTERM}.get(fault, -signal.SIGKILL)
    if code == 0:
        what += " (the run had finished first)"
    elif code != expected:
        problems.append(f"the faulted run exited {code}, expected {expected}:\n{stderr}")
    resumes = 0
    while code != 0 and resumes < 3:
        code, stderr = run_trainer(flags)
        resumes += 1
    if code != 0:
        problems.append(f"the resumed run exited {code}:\n{stderr}")
        return what, problems
    return f"{what}; {resumes} resume(s)", problems + compare(
        reference, run_dir, cache, same_losses=fault != "sigterm")


def main() -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # the comparisons import TensorFlow
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=len(FAULTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--faults", default=",".join(FAULTS),
                        help="comma-separated subset of " + ", ".join(FAULTS))
    parser.add_argument("--work_dir", default="", help="default: a new temporary directory")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    options = parser.parse_args()
    random.seed(options.seed)
    faults = options.faults.split(",")
    unknown = sorted(set(faults) - set(FAULTS))
    if unknown:
        parser.error(f"unknown faults {unknown}; choose from {', '.join(FAULTS)}")
    work = pathlib.Path(options.work_dir or tempfile.mkdtemp(prefix="fault-injection-"))
    work.mkdir(parents=True, exist_ok=True)
    corpus, cache = write_corpus(work / "corpus"), work / "data_cache"
    started = time.time()
    reference = work / "reference"
    code, stderr = run_trainer(trainer_flags(corpus, reference, cache))
    if code != 0:
        print(f"the reference run failed ({code}):\n{stderr}")
        return 1
    print(f"reference: {TRAIN_STEPS} steps in {time.time() - started:.0f} s")
    failures = 0
    for index in range(options.cycles):
        fault = faults[index % len(faults)]
        began = time.time()
        what, problems = cycle(index, fault, reference, corpus, cache, work)
        status = "ok" if not problems else "FAILED"
        failures += bool(problems)
        print(f"cycle {index}: {fault:<18} {what}: {status} ({time.time() - began:.0f} s)")
        for problem in problems:
            print("    " + problem.replace("\n", "\n    "))
    print(f"{options.cycles - failures}/{options.cycles} cycles identical to the uninterrupted "
          f"run ({time.time() - started:.0f} s; work directory {work})")
    if not options.keep and not failures:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    if CHILD_ENV in os.environ:
        child_main()
    else:
        sys.exit(main())
