"""How every command line of the package reports errors.

`run_main(main)` replaces `absl.app.run(main)`:
- a bad flag (unknown, malformed, missing required), an `app.UsageError`, a
  `ValueError` (bad value, binding or combination: the project raises these
  naming the flag, field or file) or a `UserError` (e.g. a corrupt data record,
  a checkpoint that cannot be written) prints `Error: <message>` as one line on
  stderr and exits with status 1, without a traceback;
- Ctrl-C (`KeyboardInterrupt`) prints `Interrupted.` and exits with status 130;
- any other exception keeps its traceback (an internal error);
- with `--verbosity=1` (absl's flag) every error keeps its traceback.
"""
import sys
from typing import Callable, List

from absl import app
from absl import flags

USAGE_EXIT_CODE = 1
INTERRUPT_EXIT_CODE = 130  # 128 + SIGINT, what a shell reports for Ctrl-C.


class UserError(Exception):
  """An error the user fixes outside the code: bad input data, a full disk, ...

  Reported as one line by `run_main`.
  """


USER_ERRORS = (UserError, app.UsageError, ValueError)


def one_line(error: BaseException) -> str:
  """The error's message on one line (multi-line messages joined with '; ')."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return '; '.join(lines) or type(error).__name__


def _verbose() -> bool:
  return flags.FLAGS.is_parsed() and flags.FLAGS['verbosity'].value >= 1


def _report_and_exit(message: str, code: int) -> None:
  sys.stderr.write(message + '\n')
  sys.stderr.flush()
  sys.exit(code)


def _parse_flags(argv: List[str]) -> List[str]:
  """absl's flag parsing, with a bad flag reported as one line."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _report_and_exit(f'Error: {one_line(e)}', USAGE_EXIT_CODE)


def guarded(main: Callable[[List[str]], None]) -> Callable[[List[str]], None]:
  """`main` with user errors and Ctrl-C turned into one line and an exit status."""
  def wrapped(argv):
    try:
      return main(argv)
    except KeyboardInterrupt:
      if _verbose():
        raise
      _report_and_exit('Interrupted.', INTERRUPT_EXIT_CODE)
    except USER_ERRORS as e:
      if _verbose():
        raise
      _report_and_exit(f'Error: {one_line(e)}', USAGE_EXIT_CODE)
  return wrapped


def run_main(main: Callable[[List[str]], None]) -> None:
  """`absl.app.run(main)` with the error reporting of this module."""
  try:
    app.run(guarded(main), flags_parser=_parse_flags)
  except KeyboardInterrupt:  # Outside `main`, e.g. while absl sets up.
    _report_and_exit('Interrupted.', INTERRUPT_EXIT_CODE)
