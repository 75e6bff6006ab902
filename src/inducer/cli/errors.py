"""Which errors a user can cause and fix, and the one line (and exit code) the command line prints for
each; anything else is a bug of inducer's, shown with its traceback and a request to report it.

The taxonomy is :mod:`inducer.errors`: a :class:`~inducer.errors.UserError` is one line and exit 2;
so are OS errors with an errno (no space, permission, missing file), data files ``datasets`` cannot
read, and interruptions (their own codes). A plain ``ValueError`` is not the user's: a bug.

Imports nothing heavy: the error classes of inducer's own modules are looked up only when an error
is being explained.
"""

from __future__ import annotations

import errno
import traceback

USER_ERROR = 2
BUG = 1


def explain(err: BaseException) -> tuple[str, int] | None:
    """``(one-line message, exit code)`` for an error the user can fix; None for a bug of ours."""
    from ..errors import UserError
    from ..training.interrupts import TrainingInterrupted

    if isinstance(err, TrainingInterrupted):
        return str(err), err.exit_code
    if isinstance(err, KeyboardInterrupt):
        return "interrupted (Ctrl-C) outside the training steps; the files already written are kept", 130
    if _from_datasets(err):
        cause = err.__cause__ or err.__context__
        detail = f"{err}" + (f" ({type(cause).__name__}: {cause})" if cause else "")
        message = f"the data could not be read: {_one_line(detail)}; check the data files and columns"
        return message, USER_ERROR
    if isinstance(err, OSError) and err.errno is not None:
        return _os_error(err), USER_ERROR
    # (An OSError without an errno is a library's sentence, e.g. transformers' "not a model folder".)
    # Every error inducer raises for a user's mistake is a UserError (inducer.errors); a plain
    # ValueError, a shape error from torch, ... is a bug and keeps its traceback.
    if isinstance(err, (UserError, OSError)):
        return _one_line(str(err)), USER_ERROR
    if isinstance(err, EOFError):
        return (
            f"a file or the input ended unexpectedly ({err or 'end of file'}); check that it is complete "
            "(re-download or re-create it)",
            USER_ERROR,
        )
    if isinstance(err, RuntimeError) and "out of memory" in str(err).lower()[:200]:
        return (
            "out of accelerator memory; lower --batch-size or --max-length, use --grad-accum, "
            "--gradient-checkpointing or a smaller model",
            USER_ERROR,
        )
    return None


def _version() -> str:
    from ..version import __version__

    return __version__


def bug_report(err: BaseException) -> str:
    """The traceback of an unexpected error and how to report it."""
    trace = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    return (
        f"{trace}\nThis is a bug in inducer, not something you did wrong: please report it to the "
        f"inducer maintainers (inducer {_version()}) with the command line and the traceback above."
    )


def _os_error(err: OSError) -> str:
    where = err.filename or "a file"
    code = err.errno
    if code == errno.ENOSPC:
        return f"no space left on the device writing {where}; free some space or choose another --output"
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        reason = "the file system is read-only" if code == errno.EROFS else "permission denied"
        return f"cannot write {where}: {reason}; choose a folder you can write to (--output)"
    if code in (errno.EEXIST, errno.ENOTDIR):
        return f"{where} is a file where a folder is needed; choose another --output (or remove the file)"
    if code == errno.EISDIR:
        return f"{where} is a folder where a file is needed; give the path of a file"
    if code == errno.ENOENT:
        return f"no such file or folder: {where}; check the path"
    return f"{err.strerror or 'operating system error'}: {where}; check the path, its permissions and space"


def _from_datasets(err: BaseException) -> bool:
    return type(err).__module__.split(".")[0] == "datasets"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def fail(message: str, code: int = USER_ERROR) -> None:
    """Print ``error: message`` on stderr and exit with ``code`` (a user's error: exit 2)."""
    import typer
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def guard(fn):
    """Run a command body: a user's error is one line (exit 2), a bug a traceback (exit 1)."""
    import typer
    from rich.console import Console

    try:
        return fn()
    except (typer.Exit, typer.Abort):
        raise
    except (Exception, KeyboardInterrupt) as err:
        explained = explain(err)
        if explained is None:
            Console(stderr=True).print(bug_report(err), highlight=False, markup=False, soft_wrap=True)
            raise typer.Exit(BUG) from None
        fail(*explained)
