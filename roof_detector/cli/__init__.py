"""Command line: ``python -m roof_detector COMMAND ...``.

Each sub-command lives in its own module of this package exposing
``add_parser(subparsers)`` (which registers the command and sets
``func=run`` as default) and ``run(args) -> int``. Errors of the engine
(:class:`RoofDetectorError`) end the run with a one-line message and exit
status 2; Ctrl-C ends it with status 130, SIGTERM (handled like Ctrl-C) with
143, a closed stdout pipe quietly with 141.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional

from .. import __version__

# Sub-command modules, in the order `--help` lists them. The developer commands (bench,
# score, train) live in devtools/ (`python -m devtools`), outside the plugin zip.
COMMANDS = ["detect", "detect_many", "demo", "solar", "evaluate", "finetune", "serve"]


def build_parser(
    prog: str = "python -m roof_detector", commands: Optional[Dict[str, str]] = None
) -> argparse.ArgumentParser:
    """The top-level parser with every sub-command registered (``commands``: name -> module)."""
    parser = argparse.ArgumentParser(
        prog=prog, description="Building footprints and rooftop solar sizing from orthophotos."
    )
    parser.add_argument("--version", action="version", version=f"roof_detector {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (commands or {name: f"{__name__}.{name}" for name in COMMANDS}).values():
        importlib.import_module(module).add_parser(sub)
    return parser


#: Files the running command has written in full (:func:`wrote`).
_WRITTEN: List[str] = []


def wrote(path: str) -> None:
    """Record that ``path`` is written in full: a Ctrl-C / SIGTERM that lands after it (while the
    summary is printed) names it, instead of saying that nothing was written."""
    _WRITTEN.append(str(path))


#: What the running command is writing after something else was written in full (:func:`writing`).
_PENDING: List[str] = []


@contextmanager
def writing(path: str) -> Iterator[None]:
    """Around the writing of a second output (``solar``'s report after its GeoPackage), which
    either completes or leaves nothing: a Ctrl-C / SIGTERM inside says it was not written
    instead of "only the summary is lost"; on completion it counts as :func:`wrote`."""
    _PENDING.append(str(path))
    yield  # an exception leaves it pending, for the interrupted line
    _PENDING.remove(str(path))
    wrote(path)


def _interrupted(what: str) -> str:
    """The line for an interrupted command: what it left (exit status 130 / 143 either way)."""
    if not _WRITTEN:
        return f"error: {what}; nothing was written"
    done = f"error: {what} after {', '.join(_WRITTEN)} had been written in full"
    if _PENDING:
        return f"{done}; {', '.join(_PENDING)} was not written"
    return f"{done}; only the summary is lost"


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: every clean-up that runs for Ctrl-C runs for it too."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def _usable_std_streams() -> None:
    """A closed stdout/stderr (``2>&-``) becomes /dev/null instead of a traceback at the first message."""
    for name in ("stdout", "stderr"):
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "w"))


class _Guarded:
    """A standard stream whose write errors are remembered (``failed``) and, for stderr, dropped:
    a full disk under ``2> log`` must not end the run (the progress bar failed the detection after
    the work, and the traceback itself was lost), and a failed stdout is told apart from the engine's
    own OSErrors."""

    def __init__(self, stream, swallow: bool):
        self._stream = stream
        self._swallow = swallow
        self.failed: Optional[BaseException] = None

    def write(self, text):
        try:
            return self._stream.write(text)
        except (OSError, ValueError) as exc:
            return self._failed(exc, len(text))

    def flush(self):
        try:
            self._stream.flush()
        except (OSError, ValueError) as exc:
            self._failed(exc, None)

    def _failed(self, exc, result):
        self.failed = exc
        if self._swallow:
            return result
        raise exc

    def __getattr__(self, name):
        return getattr(self._stream, name)


def main(
    argv: Optional[List[str]] = None, prog: str = "python -m roof_detector", commands: Optional[Dict[str, str]] = None
) -> int:
    """Parse ``argv`` and run the chosen sub-command; return the exit status."""
    from ..core.errors import RoofDetectorError

    _usable_std_streams()
    parser = build_parser(prog, commands)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    _WRITTEN.clear()
    _PENDING.clear()
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Guarded(sys.stdout, swallow=False), _Guarded(sys.stderr, swallow=True)
    try:
        # also after a normal return: a command that cancelled a model call (the REST service
        # stopping mid-job) must not run the interpreter's teardown under the abandoned call
        return _leave(int(args.func(args) or 0))
    except RoofDetectorError as exc:
        _say(f"error: {exc}")
        return 2
    except Terminated:
        _say(_interrupted("terminated (SIGTERM)"))
        return _leave(143)
    except KeyboardInterrupt:
        _say(_interrupted("interrupted"))
        return _leave(130)
    except BrokenPipeError:
        # The reader of stdout went away (`... | head`): nothing more to say to it. Python would
        # report the pipe again when flushing stdout at exit, so point stdout at /dev/null.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:
        if sys.stdout.failed is not exc or isinstance(exc, BrokenPipeError):
            raise
        # `> /dev/full`, a full disk: the work is done (files written), only the summary is lost.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        _say(f"error: cannot write to the standard output ({exc.strerror or exc}); what it was to print is lost")
        return 2
    finally:
        sys.stdout, sys.stderr = streams
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _leave(status: int) -> int:
    """``status``, or the process ends here and now when a model call it abandoned still runs.

    A model file that never returns (an endless loop) keeps its thread in C++
    (core/interruptible.py): the interpreter's normal exit would run C++
    destructors under it. Nothing is left to write, so leave at once.
    """
    interruptible = sys.modules.get("roof_detector.core.interruptible")
    try:
        stuck = interruptible is not None and interruptible.stuck_calls() > 0
    except BaseException:  # noqa: BLE001 - a second Ctrl-C while waiting: leave all the same
        stuck = True
    if stuck:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(status)
    return status


def leave_after_interrupt(status: int) -> None:
    """End the process with ``status``, also when Ctrl-C / SIGTERM ended the run (130, 143).

    A Ctrl-C that lands while a native library runs Python code through the C API
    (``import torch`` does) leaves CPython's "unhandled KeyboardInterrupt" flag set even
    though our handler caught it, and the interpreter then ends itself with SIGINT
    after the message (status -2 instead of 130, seen on fine-tuning). After an
    interrupt the exit handlers run here and the process leaves with our status.
    """
    if status not in (130, 143):
        sys.exit(status)
    import atexit

    try:
        atexit._run_exitfuncs()
    except BaseException:  # noqa: BLE001 - a second Ctrl-C while cleaning up: leave all the same
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


def _say(line: str) -> None:
    """One line on stderr; a closed or broken stderr must not turn it into a traceback."""
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass
