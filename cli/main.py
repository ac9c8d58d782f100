"""The `cacheclip` command: parse options -> one library call -> render.

Every user error becomes one `error:` line, a `hint:` line and exit code 1
(bad option values exit 2, from typer). Set CACHECLIP_DEBUG=1 for tracebacks.
"""

from __future__ import annotations

import sys

import typer

from cacheclip.cli import batch, check, data, features, fit  # noqa: F401  (importing registers the commands)
from cacheclip.cli import common as c
from cacheclip.cli.app import app

# command -> (its function, the option that names its method(s))
_TAKES_METHOD_OPTIONS = {"fit": (fit.fit, "--method"), "batch": (batch.batch, "--methods")}
INTERRUPTED = 130  # the shell's code for a process stopped by SIGINT


def main() -> None:
    c.quiet_libraries()
    command = next((a for a in sys.argv[1:] if not a.startswith("-")), None)
    if command in _TAKES_METHOD_OPTIONS:  # only then: listing the methods imports torch
        function, option = _TAKES_METHOD_OPTIONS[command]
        # every method's options are accepted; --help lists those of the named method(s) only
        c.attach_method_options(function, shown=c.named_methods(sys.argv, option))
    try:
        code = app(standalone_mode=False)  # returns typer.Exit's code instead of raising it
    except typer.Exit as e:
        code = e.exit_code
    except (typer.Abort, KeyboardInterrupt) as e:
        # click turns an EOFError escaping a command (a truncated gzip stream...) into Abort as
        # well: only a real Ctrl-C reads as an interruption; the rest is an error like any other
        eof = e.__cause__ if isinstance(e.__cause__, EOFError) else None
        code = c.report_error(eof) if eof is not None else INTERRUPTED
    except Exception as e:
        code = c.report_error(e)  # click usage errors show themselves and give 2
    if code == INTERRUPTED:  # typer turns Ctrl-C into this exit code before our code sees it
        c.console.print(c.interrupted_message(sys.argv), highlight=False, markup=False, soft_wrap=True)
    sys.exit(code if isinstance(code, int) else 0)
