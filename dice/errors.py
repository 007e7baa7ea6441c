"""User errors: a problem the user can fix ends a command with one line, never a traceback.

Every entry point (train_*.py, sample.py, evaluation/*.py, ``python -m dice.demo`` and
``dice.testkit.demo_eval``) runs its ``main`` inside :func:`exit_on_user_error`. Library code raises
:class:`UserError` (or a subclass) whose message reads ``<what is wrong>. <how to fix it>``; the
entry point prints ``error: <message>`` on stderr and exits with status 2. A full disk or a
read-only / forbidden output is reported the same way. Anything else is a bug and keeps its traceback.

Also here, so that bad input is refused before any model is loaded and before anything is written:
:class:`ArgumentParser` (argparse's own errors in the same one-line form), argparse value types
that refuse out-of-range numbers while parsing, and checks that an output path can be written.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import math
import os
import sys
from pathlib import Path

EXIT_CODE = 2


class UserError(Exception):
    """A problem the user can fix; ``str()`` is ``<what is wrong>. <how to fix it>``."""


def one_line(message: object) -> str:
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


# OS errors that are the environment's fault, not a bug: (what is wrong, how to fix it).
_OS_ERRORS = {
    errno.ENOSPC: ("no space left on device", "Free some space or write to another disk, then run the command again"),
    errno.EDQUOT: ("disk quota exceeded", "Free some space or write to another disk, then run the command again"),
    errno.EROFS: ("read-only file system", "Choose an output path on a writable disk"),
    errno.EACCES: ("permission denied", "Choose a path you can write to, or fix its permissions"),
}


def is_disk_full(error: BaseException) -> bool:
    """An OSError of a full disk, or a library's wrapped one (safetensors reports 'os error 28')."""
    text = str(error)
    return getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in text or "os error 28" in text


def describe_os_error(error: OSError) -> str | None:
    """One line for an environment OSError (full disk, read-only, forbidden), else None."""
    if error.errno not in _OS_ERRORS:
        return None
    what, fix = _OS_ERRORS[error.errno]
    where = f" while writing '{error.filename}'" if error.filename else ""
    return f"{what}{where}. {fix}"


@contextlib.contextmanager
def exit_on_user_error():
    """For entry points: a UserError (or a full disk, ...) becomes ``error: <message>`` and exit status 2."""
    try:
        yield
    except UserError as error:
        _exit(one_line(error))
    except FileNotFoundError as error:  # a path the user gave does not exist; the message names it
        _exit(one_line(error))
    except OSError as error:
        message = describe_os_error(error)
        if message is None:
            raise
        _exit(message)


def _exit(message: str):
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_CODE) from None


class ArgumentParser(argparse.ArgumentParser):
    """argparse with its errors in the one-line form (no usage block): raised as a UserError."""

    def error(self, message: str):
        raise UserError(f"{message}. Run `{self.prog} --help` for the options")


# ---- argparse value types: a bad number is refused while parsing ----------------------------------

def _number_type(convert, accept, requirement: str):
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {requirement}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {requirement}")
        return value

    parse.__name__ = requirement  # argparse names the type in some messages
    return parse


positive_int = _number_type(int, lambda v: v >= 1, "a whole number >= 1")
non_negative_int = _number_type(int, lambda v: v >= 0, "a whole number >= 0")
finite_float = _number_type(float, math.isfinite, "a finite number")
positive_float = _number_type(float, lambda v: math.isfinite(v) and v > 0, "a finite number > 0")
non_negative_float = _number_type(float, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")
probability = _number_type(float, lambda v: 0 <= v <= 1, "a probability between 0 and 1")
fraction = _number_type(float, lambda v: 0 <= v < 1, "a number in [0, 1)")


def int_between(low: int, high: int):
    """An argparse type: a whole number from ``low`` to ``high``."""
    return _number_type(int, lambda v: low <= v <= high, f"a whole number from {low} to {high}")

# Every guidance scale (CFG's w, a teacher's w, GD / PnP's ω) is >= 1, where 1 means unguided. Below 1 is
# refused rather than supported: the stock diffusers pipelines that sample treat any w <= 1 as no guidance
# (`do_classifier_free_guidance = guidance_scale > 1`), so a smaller w would be recorded but not applied,
# and a sharpener distilled from a w < 1 teacher would imitate something no sampler here produces.
guidance_scale = _number_type(float, lambda v: math.isfinite(v) and v >= 1, "a guidance scale >= 1 (1 = unguided)")


# ---- outputs: refuse an unwritable path before the long work, not after it ------------------------

def check_output_dir(path: str | os.PathLike, option: str) -> None:
    """``path`` is, or can be created as, a folder this process can write into (nothing is created)."""
    path = Path(os.path.abspath(path))
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        where = f"'{path}' is a file" if existing == path else f"'{existing}' is a file, so '{path}' cannot be created under it"
        raise UserError(f"{option} {where}. Choose a folder path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{option} '{path}': no permission to write in '{existing}'. Choose a folder you can write to")


def check_output_file(path: str | os.PathLike, option: str) -> None:
    """``path`` is, or can be created as, a file this process can write (nothing is created)."""
    path = Path(os.path.abspath(path))
    if path.is_dir():
        raise UserError(f"{option} '{path}' is a folder. Give a file path")
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"{option} '{path}' is not writable. Fix its permissions or choose another file")
    check_output_dir(path.parent, option)


def default_file_mode() -> int:
    """The mode a plain ``open(path, "w")`` gives a new file (0o666 minus the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def give_default_permissions(*paths: str | os.PathLike) -> None:
    """safetensors creates files readable by their owner only (0600); give them the mode of every
    other file we write, so a checkpoint folder can be shared like its JSON beside it."""
    mode = default_file_mode()
    for path in paths:
        os.chmod(path, mode)
