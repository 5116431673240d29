"""Where the server may open files, and how any file is opened: roots fixed when the server starts, as Jupyter's root directory and
TensorBoard's `--logdir` are.

A page visitor (a link, a text box) can name a path; it is opened only when it resolves (symlinks
followed) inside one of the allowed roots. The roots are the directory the server was started from,
the bundled models, `$MOE_SCOPE_MODEL` when set, and every directory listed in `$MOE_SCOPE_ROOTS`
(separated by the OS path separator, ':' on Linux). A refused path gets one message that does not tell
an existing file from a missing one, and never repeats the value.
"""
from __future__ import annotations

import os
import pathlib
import stat

ROOTS_ENV = "MOE_SCOPE_ROOTS"
MODEL_ENV = "MOE_SCOPE_MODEL"
MODELS_DIR = pathlib.Path(__file__).resolve().parent / "models"  # package data: installed with `pip install .`
OUTSIDE = (f"that path is not under a directory this server may open; the operator allows more with "
           f"{ROOTS_ENV} (see the README, 'Files on the server')")


class OutsideRoots(ValueError):
    """A path outside every allowed root (or one that does not exist: the two read the same)."""

    def __init__(self) -> None:
        super().__init__(OUTSIDE)


def allowed_roots() -> list[pathlib.Path]:
    """The resolved roots: read from the server process's working directory and environment, which are set when
    it starts and which nothing a page visitor sends can change (read on each call, so tests can set them)."""
    roots = [pathlib.Path.cwd(), MODELS_DIR]
    model = os.environ.get(MODEL_ENV, "").strip()
    if model:
        roots.append(pathlib.Path(model))
    roots += [pathlib.Path(p) for p in os.environ.get(ROOTS_ENV, "").split(os.pathsep) if p.strip()]
    return [r.expanduser().resolve() for r in roots]


def resolve_allowed(path: str, kind: str = "any") -> pathlib.Path:
    """`path` resolved, if it exists under an allowed root and is a regular file ('file'), a directory
    ('dir') or either ('any'); else OutsideRoots, whose message neither echoes the path nor says whether
    it exists."""
    if not isinstance(path, str) or not path.strip() or "\x00" in path:
        raise OutsideRoots()
    try:
        real = pathlib.Path(path.strip()).expanduser().resolve(strict=True)
    except (OSError, RuntimeError):
        raise OutsideRoots() from None
    if not any(real == root or root in real.parents for root in allowed_roots()):
        raise OutsideRoots()
    if (kind == "file" and not real.is_file()) or (kind == "dir" and not real.is_dir()):
        raise OutsideRoots()
    return real


def open_regular(path: str, what: str, hint: str):
    """`path` opened for binary reading if it is a regular file; else ValueError, one line naming `what` and
    ending with `hint`. Opened non-blocking and checked on the open descriptor: a FIFO or a device is refused,
    never waited on or read (a check before opening could be raced)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise ValueError(f"{what} {path!r} does not exist; {hint}") from None
    except OSError as err:
        raise ValueError(f"{what} {path!r} cannot be read ({err.strerror}); {hint}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ValueError(f"{what} {path!r} is not a regular file (a directory, pipe or device); {hint}")
    return os.fdopen(fd, "rb")


def lies_in(path: str, home: str) -> bool:
    """Whether `path`, symlinks followed, names an entry directly in the folder `home` (a resolved path)."""
    return os.path.dirname(os.path.realpath(path)) == home


class LinksOutside(ValueError):
    """`open_inside`: the file opened does not lie in the folder it was named in."""


def open_inside(path: str, home: str, what: str, hint: str, outside: str):
    """`path` opened as `open_regular` opens it, if the file opened lies directly in the folder `home` (symlinks
    followed); else LinksOutside `outside`. `home` is that folder's resolved path as the caller checked it: it is not
    resolved again here, so a folder swapped for a link since is not followed. Checked on the open descriptor: the
    file opened must be the one `path` resolves to after opening, so a link swapped in between a check and the open
    (by a writer inside the folder), for the file or a folder on its path, is refused."""
    if os.path.lexists(path) and not lies_in(path, home):
        raise LinksOutside(outside)  # before opening: a file outside is not opened, unless swapped in after this
    f = open_regular(path, what, hint)
    real = os.path.realpath(path)
    try:
        same = os.path.dirname(real) == home and os.path.samestat(os.fstat(f.fileno()), os.stat(real))
    except OSError:
        same = False
    if not same:
        f.close()
        raise LinksOutside(outside)
    return f


def read_regular(path: str, cap: int, what: str, hint: str, opened=None) -> bytes:
    """At most `cap` + 1 bytes of a regular file (one more than the cap, so a caller can tell a cut file);
    `opened`: the file, when the caller opened it (it is closed here)."""
    with opened or open_regular(path, what, hint) as f:
        try:
            return f.read(cap + 1)  # the size can change after opening: never read more than the cap
        except OSError as err:
            raise ValueError(f"{what} {path!r} cannot be read ({err.strerror}); {hint}") from None
