"""User errors: one exception type of our own, reported by every command as one line.

A problem the user can act on (a missing or malformed file, an unknown category, a checkpoint of
another model, ...) is raised as `UserError("<file or flag>: <problem>")` where it is found. Each
command's `main` runs its work inside `user_errors(...)`, which prints `error: <message>` on stderr
and exits with status 1. Anything else is a bug and keeps its traceback; `--debug` (or the
environment variable SED_DEBUG=1) shows the traceback of a user error too. Ctrl-C is one line too
(exit status 130), and a warning is one line `warning: <message>` (Python's format adds the file, the
line number and the source line of the code that warned).
"""
import argparse
import contextlib
import os
import sys
import warnings


class UserError(ValueError):
    """A one-line message naming the file or flag at fault. A ValueError, so that code (and tests)
    catching ValueError around our functions keep working."""


def one_line(error):
    """The user's message of `error`. A DataLoader worker's error is re-raised in the main process as
    `type(e)("Caught UserError in DataLoader worker process 0.\\nOriginal Traceback ...")`; the last
    line of that traceback is `sed.errors.UserError: <message>`, which is what the user needs."""
    text = str(error).strip()
    if "\nOriginal Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return text.splitlines()[0] if text else type(error).__name__


def debug_requested(flag=False):
    return flag or os.environ.get("SED_DEBUG", "") not in ("", "0")


def rank_prefix():
    """"" on rank 0 (or without torchrun), else "[rank k] ": a line of another rank is attributed."""
    rank = os.environ.get("RANK", "0")
    return "" if rank == "0" else f"[rank {rank}] "


def report(message):
    """`error: <message>` on stderr; under torchrun ranks other than 0 prefix their rank, so that a
    problem met by one rank only (a corrupt image in its shard) is still attributed."""
    from tqdm import tqdm  # end the line of an open progress bar, so the error has a line of its own
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()
    sys.stderr.write(f"{rank_prefix()}error: {message}\n")   # one write: ranks' lines do not interleave
    sys.stderr.flush()


def show_warning(message, category, filename, lineno, file=None, line=None):
    """warnings.showwarning as one line `warning: <message>` on stderr (with report's rank prefix), on a
    line of its own above an open progress bar (tqdm.write), written at once with its newline."""
    from tqdm import tqdm
    tqdm.write(f"{rank_prefix()}warning: {message}\n", file=sys.stderr if file is None else file, end="")


@contextlib.contextmanager
def user_errors(debug=False, memory_flags=""):
    """Run a command's work: UserError -> one line on stderr and exit status 1 (a traceback with
    `debug` or SED_DEBUG=1). With memory_flags (the flags that lower memory, e.g. "--batch-size,
    --dtype bfloat16"), CUDA running out of memory is reported the same way, naming them."""
    out_of_memory = ()
    if memory_flags:
        import torch  # the commands that name memory flags have imported torch already
        out_of_memory = (torch.cuda.OutOfMemoryError,)
    try:
        with warnings.catch_warnings():   # restores Python's warning display on exit
            if not debug_requested(debug):
                warnings.showwarning = show_warning
            yield
    except KeyboardInterrupt:
        if debug_requested(debug):
            raise
        report("interrupted (Ctrl-C)")
        sys.exit(130)   # 128 + SIGINT, the shell's convention
    except (UserError, *out_of_memory) as e:
        if debug_requested(debug):
            raise
        if isinstance(e, UserError):
            report(one_line(e))
        else:  # "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has ...": keep two sentences
            what = ". ".join(one_line(e).split(". ")[:2])
            report(f"{memory_flags.split(',')[0].split()[0]}: {what}; lower {memory_flags}")
        sys.exit(1)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (`error: argument --max-iter: invalid int value: 'x'`, exit
    status 2) instead of the usage text followed by the error; --help still shows the usage."""

    def error(self, message):
        report(message)
        sys.exit(2)
