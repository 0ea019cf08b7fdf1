"""Every file and folder `nas` writes for the user: checked before long work, written atomically.

A target is checked up front (before training, which takes minutes): a path that is a folder where a
file is wanted (or the reverse), a path under a file, a read-only folder or a full disk is a clear
error then, not a traceback after the work. A file is written to a temporary file beside it and
renamed into place; a folder likewise, and `nas` replaces only a folder that holds its own export
files and nothing else, keeping the old one until the new one is in place.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

from nas.errors import NasError

EXPORT_FILES = ("model.pt", "arch.yaml", "metrics.json", "model.onnx", "model.ts")
MIN_FREE = 16 << 20  # bytes a target's disk must have free beyond what is written: SQLite and temp files need room


class WriteError(NasError):
    """A file or folder that cannot be written where the user asked."""


def check_file_target(path: Path, what: str, need: int = 0) -> None:
    """Fail now if `path` cannot be written as a file (`what` names it in the message: 'the report')."""
    path = Path(path)
    if path.is_dir():
        raise WriteError(f"{path} is a folder, but {what} is a file: pass a file path such as {path / 'x'}.")
    _check_folder_writable(path.parent, what, need)
    if path.exists():
        try:  # open for writing without writing: a read-only file or file system fails here
            with open(path, "r+b"):
                pass
        except OSError as e:
            raise WriteError(f"cannot write {what} {path}: {e.strerror}. Choose a writable place.") from e


def check_export_target(out: Path, force: bool, need: int = 0) -> None:
    """Fail now if `out` cannot take an export: it is a file, a folder of other things, or not writable.

    An empty folder is used as it is; an earlier export of `nas` (its files and nothing else) only
    with `force`; anything else never, since replacing it would delete what the user keeps there.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise WriteError(f"{out} is a file, not a folder: pass a new folder path to --export.")
    if out.is_dir() and any(out.iterdir()):
        if not is_export(out):
            others = sorted(p.name for p in out.iterdir() if p.name not in EXPORT_FILES)[:5]
            raise WriteError(
                f"{out} holds files that are not an export of nas ({', '.join(others) or 'an unreadable metrics.json'}"
                f"{', …' if len(others) == 5 else ''}); nas replaces only a folder it wrote itself, even with --force. "
                "Choose a new folder."
            )
        if not force:
            raise WriteError(f"{out} already exists; pass --force to replace it, or choose another folder.")
    _check_folder_writable(out.parent, "the export", need)


def is_export(folder: Path) -> bool:
    """Whether `folder` holds only files an export writes, including a readable metrics.json of one."""
    names = {p.name for p in folder.iterdir()}
    if not names <= set(EXPORT_FILES) or "metrics.json" not in names or not (folder / "metrics.json").is_file():
        return False
    try:
        metrics = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(metrics, dict) and {"input_shape", "classes"} <= set(metrics)


def write_file(path: Path, data: str | bytes) -> None:
    """Write `data` to `path` atomically: readers see the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; give it the mode open() would
        os.replace(tmp, path)
    except OSError as e:
        raise WriteError(f"cannot write {path}: {e.strerror or e}. Nothing was changed there.") from e
    finally:
        Path(tmp).unlink(missing_ok=True)


def new_folder_beside(out: Path) -> Path:
    """An empty temporary folder on the same file system as `out`, to fill and then `replace_folder` with."""
    out.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{out.name}-new-", dir=out.parent))
    folder.chmod(0o777 & ~_umask())  # mkdtemp makes it private; it becomes the user's folder, made as mkdir would
    return folder


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it, so set it straight back
    os.umask(mask)
    return mask


def replace_folder(new: Path, out: Path) -> None:
    """Move the filled folder `new` to `out`. An earlier export there is renamed aside first and deleted
    only once `new` is in place; if the move fails, it is renamed back, so the user keeps one of them."""
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    if not out.exists():
        os.rename(new, out)
        return
    if not is_export(out):  # checked before the work too; this guards against a change since
        raise WriteError(f"{out} now holds files that are not an export of nas (put there during the export); "
                         "nothing was changed there. Choose a new folder.")
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}-old-", dir=out.parent))
    os.rename(out, old / out.name)
    try:
        os.rename(new, out)
    except OSError:
        os.rename(old / out.name, out)
        old.rmdir()
        raise
    shutil.rmtree(old, ignore_errors=True)


def _check_folder_writable(folder: Path, what: str, need: int) -> None:
    """The nearest existing ancestor of `folder` must be a folder we can create files in, with room."""
    existing = folder
    while not existing.exists():
        if existing.is_symlink():  # a dangling link: mkdir would fail on it
            raise WriteError(f"cannot write {what} under {folder}: {existing} is a broken link.")
        existing = existing.parent
    if not existing.is_dir():
        raise WriteError(f"cannot write {what} under {folder}: {existing} is a file, not a folder.")
    try:
        fd, probe = tempfile.mkstemp(prefix=".nas-probe-", dir=existing)
        try:
            os.write(fd, b"\0" * 4096)  # a full disk may still create an empty file, but not store a block
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
        free = shutil.disk_usage(existing).free
    except OSError as e:
        fix = "Free some space, or choose another place." if e.errno == errno.ENOSPC else "Choose a writable place."
        raise WriteError(f"cannot write {what} in {existing}: {e.strerror or e}. {fix}") from e
    if free < need + MIN_FREE:
        raise WriteError(f"cannot write {what} in {existing}: only {free / 2**20:.1f} MiB free, it needs about "
                         f"{(need + MIN_FREE) / 2**20:.0f} MiB. Free some space or choose another place.")


class ReadError(NasError):
    """An input path that is not a file nas can read: a pipe, a device, a socket or a folder."""


_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def check_readable_file(path: Path, what: str) -> None:
    """Refuse `path` unless it is a regular file (or a link to one), from its stat, without opening it.

    Opening a FIFO blocks until a writer comes (forever, usually) and a device such as /dev/zero never
    ends, so every reader asks here first. A path that does not exist passes: the reader's own open
    then says so in its words. `what` names the input in the message: 'the space file', 'an image'."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as e:
        raise ReadError(f"cannot read {what} {path}: {e.strerror or e}. Check the path.") from e
    if stat.S_ISREG(mode):
        return
    kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    raise ReadError(f"{path}: is {kind}, but {what} must be a regular file (nas does not open pipes or devices: "
                    "they would block or never end). Pass the file itself.")


def name_text(name: str) -> str:
    """A file name as text that every writer takes. A name whose bytes are not UTF-8 (Latin-1 `café`) comes
    from the OS with lone surrogates, which SQLite, YAML and UTF-8 writers refuse; they are shown as \\xNN,
    so the name stays readable and two such names stay two."""
    try:
        raw = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate no file name decodes to
        raw = name.encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace")
