"""Parsing a command line with absl flags, for the commands that tests also call in-process.

`python -m data_pipeline.download`, `python -m serving.predict` and `python -m trainer.export`
declare their flags on a `flags.FlagValues` of their own (so tests can call `main(argv)` again and
again, and the commands' flags never collide in one process) and parse it here:

- `--helpfull` (also `--help`, `-?`) prints the command's docstring and every flag, and exits 0;
- `--flagfile=FILE` reads flags from a file (absl's own);
- a bad, unknown or missing flag, or an argument the command does not take, prints
  `error: ...` and where to look, and exits 2, never with a traceback.

`python -m trainer.main` and `python -m data_pipeline.preprocess` run under `absl.app.run` with the
global `flags.FLAGS` instead (same flag syntax and `--helpfull`); `absl_flags_parser` gives them
the same `error: ...` line for a bad flag (absl's own would print "FATAL Flags parsing error"),
and `unexpected_arguments` the message for an argument they do not take.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from absl import flags


class _HelpRequested(Exception):
    """Raised while parsing, before required flags are checked (as absl.app's help flags do)."""


class _HelpFlag(flags.BooleanFlag):
    def parse(self, argument) -> None:
        super().parse(argument)
        if self.value:
            raise _HelpRequested()


def parse_flags(flag_values: flags.FlagValues, argv: Sequence[str] | None, *, program: str,
                description: str, positional: bool = False, stdout: TextIO | None = None,
                stderr: TextIO | None = None) -> list[str]:
    """Parses `argv` (without the program name; default `sys.argv[1:]`) into `flag_values`.

    Args:
      flag_values: a FlagValues holding the command's flags (and nothing parsed yet).
      argv: the arguments.
      program: how the command is run, for messages (e.g. "python -m serving.predict").
      description: printed above the flags by --helpfull (the module docstring, say).
      positional: the command takes arguments besides flags.
      stdout, stderr: where help and errors go (default: sys.stdout, sys.stderr).

    Returns:
      The arguments that are not flags, in order (empty unless `positional`).

    Raises:
      SystemExit: 0 after printing the help, 2 after printing a usage error.
    """
    for name, short_name in (("helpfull", None), ("help", "?")):
        if name not in flag_values:
            flags.DEFINE_flag(_HelpFlag(name, False, "Show this command's flags and exit.",
                                        short_name=short_name), flag_values)
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        rest = flag_values([program, *argv])[1:]
    except _HelpRequested:
        out = stdout or sys.stdout
        out.write(f"{description.strip()}\n\nflags of {program}:\n{flag_values.get_help()}\n")
        raise SystemExit(0) from None
    except flags.Error as e:
        _usage_error(str(e), program, stderr)
    if rest and not positional:
        _usage_error(unexpected_arguments(rest), program, stderr)
    return rest


def absl_flags_parser(program: str, *, exit_code: int,
                      flag_values: flags.FlagValues | None = None
                      ) -> Callable[[list[str]], list[str]]:
    """The `flags_parser` for `absl.app.run(main, flags_parser=...)`.

    Parses argv into `flag_values` (default `flags.FLAGS`) as absl's default parser does; a bad,
    unknown or missing flag prints `error: <absl's reason>` and where the flags are listed, and
    exits with `exit_code` (the command's status for any other bad input), never "FATAL".
    """
    def parse(argv: list[str]) -> list[str]:
        try:
            return (flags.FLAGS if flag_values is None else flag_values)(argv)
        except flags.Error as error:
            print(f"error: {error}\n{program} --helpfull lists the flags.", file=sys.stderr)
            raise SystemExit(exit_code) from None

    return parse


def unexpected_arguments(arguments: Sequence[str], program: str | None = None) -> str:
    """The message for arguments a command does not take (all its values are flags).

    Args:
      arguments: the stray arguments.
      program: how the command is run, to name its --helpfull (omit where the caller adds it).
    """
    message = (f"unexpected arguments {list(arguments)}: every value is given as a flag, "
               f"--name=value")
    return message + (f" (`{program} --helpfull` lists the flags)" if program else "")


def _usage_error(message: str, program: str, stderr: TextIO | None) -> None:
    print(f"error: {message}\n{program} --helpfull lists the flags.", file=stderr or sys.stderr)
    raise SystemExit(2)
