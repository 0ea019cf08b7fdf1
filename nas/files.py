"""Every file and folder `nas` writes for the user: checked before long work, written atomically.

A target is checked up front (before training, which takes minutes): a path that is a folder where a
file is wanted (or the reverse), a path under a file, a read-only folder, a full disk, a device, FIFO
or socket (a rename would replace the node itself), or a path that is one of the command's own
inputs (`check_not_input`) is a clear error then, not a traceback or lost data after the work. A file
is written to a temporary file beside it and renamed into place; a folder likewise, and `nas`
replaces only a folder that holds its own export files and nothing else, keeping the old one until
the new one is in place. A temporary's name says which process of which host made it, so one that a
killed `nas` left behind is recognised and removed by the next check in its folder (`clean_leftovers`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import re
import shutil
import socket
import stat
from pathlib import Path
from typing import Iterable, Iterator

from nas.errors import NasError

EXPORT_FILES = ("model.pt", "arch.yaml", "metrics.json", "model.onnx", "model.ts")
MIN_FREE = 16 << 20  # bytes a target's disk must have free beyond what is written: SQLite and temp files need room
NAME_KEPT = 200  # characters of a target's name its temporaries keep: with the owner, a name must stay under 255
# what `_temp_prefix` makes: .NAME-KIND-PID.HOST-XXXXXXXX (the last part is random, from _TEMP_CHARS)
_LEFTOVER = re.compile(r"\..*-(new|old|tmp|probe)-(\d+)\.([0-9a-f]{8})-[a-z0-9_]{8}", re.DOTALL)
_TEMP_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_"
_SPECIAL = {stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device", stat.S_IFIFO: "a FIFO (named pipe)",
            stat.S_IFSOCK: "a socket"}


class WriteError(NasError):
    """A file or folder that cannot be written where the user asked."""


def check_file_target(path: Path, what: str, need: int = 0) -> None:
    """Fail now if `path` cannot be written as a file (`what` names it in the message: 'the report')."""
    path = Path(path)
    if path.is_dir():
        raise WriteError(f"{path} is a folder, but {what} is a file: pass a file path such as {path / 'x'}.")
    _check_regular(path, what)
    _check_folder_writable(Path(os.path.realpath(path)).parent, what, need)
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
        raise WriteError(f"{out} is {_kind(out) or 'a file'}, not a folder: pass a new folder path to --export.")
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


def check_not_input(target: Path, option: str, inputs: Iterable[tuple[str, Path]]) -> None:
    """Fail now if writing `target` (given as `option`) would write over what the command reads.

    `inputs` are (what, path) pairs: ('the --storage database', s.db). The target may not be an input
    (by name, through a link, or as a hard link of it), lie inside an input folder, or be a folder
    holding an input (an export replaces its whole folder)."""
    target = Path(target)
    mine = Path(os.path.realpath(target))
    for what, path in inputs:
        theirs = Path(os.path.realpath(path))
        if mine == theirs or _same_file(mine, theirs):
            raise WriteError(f"{option} {target} is {what} {path}, which nas would destroy by writing over it. "
                             f"Choose another path for {option}.")
        if theirs in mine.parents:
            raise WriteError(f"{option} {target} is inside {what} {path}; nas writes nothing into it. Choose a path "
                             f"outside it for {option}.")
        if mine in theirs.parents:
            raise WriteError(f"{option} {target} holds {what} {path}, which nas would delete by replacing the folder. "
                             f"Choose another folder for {option}.")


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
    """Write `data` to `path` atomically: readers see the old file or the new one, never a part.

    A link is written through (the file it names is replaced, the link stays); a device, FIFO or
    socket is refused, since the rename would put a regular file in its place."""
    path = Path(path)
    real = Path(os.path.realpath(path))
    _check_regular(path, "this file")
    real.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(real.parent, _temp_prefix(real.name, "tmp"))
    try:
        with open(tmp, "xb") as f:  # the mode open() gives: the umask applies
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        _check_regular(path, "this file")  # again: a FIFO may have been made there since
        os.replace(tmp, real)
    except OSError as e:
        raise WriteError(f"cannot write {path}: {e.strerror or e}. Nothing was changed there.") from e
    finally:
        Path(tmp).unlink(missing_ok=True)


@contextlib.contextmanager
def new_folder_beside(out: Path) -> Iterator[Path]:
    """An empty temporary folder on the same file system as `out`, to fill and then `replace_folder` with;
    deleted on leaving, whatever happens (once moved into place, nothing is left to delete)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    folder = _temp_name(out.parent, _temp_prefix(out.name, "new"))
    try:
        os.mkdir(folder)  # as mkdir would: the umask applies
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _temp_name(parent: Path, prefix: str) -> Path:
    """A free name for a temporary in `parent`: `prefix` (which holds our pid) and 8 random characters.

    Named before it is made, unlike `tempfile.mkdtemp`, whose name is lost to a signal that lands just
    after its mkdir: the caller makes it inside a `try` whose `finally` deletes it, so nothing is left."""
    while True:
        path = parent / (prefix + "".join(random.choices(_TEMP_CHARS, k=8)))
        if not os.path.lexists(path):  # and no other process can make it: the name holds our pid
            return path


def replace_folder(new: Path, out: Path) -> None:
    """Move the filled folder `new` to `out`. An earlier export there is moved aside first and deleted
    only once `new` is in place; if the move fails or a signal comes between, it is moved back, so the
    user keeps one of them (and after a kill -9 there, `clean_leftovers` moves it back)."""
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    if not out.exists():
        os.rename(new, out)
        return
    if not is_export(out):  # checked before the work too; this guards against a change since
        raise WriteError(f"{out} now holds files that are not an export of nas (put there during the export); "
                         "nothing was changed there. Choose a new folder.")
    old = _temp_name(out.parent, _temp_prefix(out.name, "old"))
    try:
        os.mkdir(old)
        os.rename(out, old / out.name)
        os.rename(new, out)
    finally:  # on an error or a signal too
        if not os.path.lexists(out) and os.path.lexists(old / out.name):  # the new one did not get there
            os.rename(old / out.name, out)
        shutil.rmtree(old, ignore_errors=True)


def clean_leftovers(folder: Path) -> None:
    """Delete the temporaries that a `nas` killed on this host (kill -9, a power cut) left in `folder`.

    Only names `_temp_prefix` makes, of this host, whose process is gone, and of the kind the name says
    (a file, or a real folder) are touched; an earlier export moved aside when the kill came is moved
    back to its place if that is free. Anything else, or what cannot be removed now, is left alone."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        found = _LEFTOVER.fullmatch(entry.name)
        if not found or found[3] != _host_key() or _alive(int(found[2])):
            continue
        try:
            if found[1] in ("tmp", "probe") and entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
            elif found[1] == "new" and entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            elif found[1] == "old" and entry.is_dir(follow_symlinks=False):
                _put_back(Path(entry.path))
        except OSError:
            continue  # another nas cleaning it at the same time, or not ours to delete after all


def _put_back(old: Path) -> None:
    """A folder `replace_folder` moved an export into: the export goes back to its place if that is free,
    or is deleted with the folder if the new one is there. A folder holding anything else is left alone."""
    inside = list(old.iterdir())
    if not all(p.is_dir() and not p.is_symlink() and {q.name for q in p.iterdir()} <= set(EXPORT_FILES)
               for p in inside):
        return
    for p in inside:
        if not os.path.lexists(old.parent / p.name):
            if not is_export(p):
                return  # a part of one, with nothing in its place: not ours to decide
            os.rename(p, old.parent / p.name)
    shutil.rmtree(old)


def _temp_prefix(name: str, kind: str) -> str:
    """The start of a temporary's name: its target, its kind, and the process and host that made it."""
    return f".{name[:NAME_KEPT]}-{kind}-{os.getpid()}.{_host_key()}-"


def _host_key() -> str:
    """Eight hex digits that name this host and its process-id namespace (a container's pids are its own)."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")  # 'pid:[4026531836]'
    except OSError:  # not Linux
        namespace = ""
    return hashlib.sha256(f"{socket.gethostname()}/{namespace}".encode()).hexdigest()[:8]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, as another user's process
        return True
    return True


def _kind(path: Path) -> str | None:
    """'a character device', 'a FIFO (named pipe)', ... for a node that is not a regular file or folder."""
    try:
        return _SPECIAL.get(stat.S_IFMT(os.stat(path).st_mode))
    except OSError:  # missing, or a broken link: a new file is made
        return None


def _check_regular(path: Path, what: str) -> None:
    kind = _kind(path)
    if kind:
        raise WriteError(f"{path} is {kind}: nas writes {what} to a regular file only, and renaming one into place "
                         "would replace the node itself. Choose a file path.")


def _same_file(a: Path, b: Path) -> bool:
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _check_folder_writable(folder: Path, what: str, need: int) -> None:
    """The nearest existing ancestor of `folder` must be a folder we can create files in, with room."""
    existing = folder
    while not existing.exists():
        if existing.is_symlink():  # a dangling link: mkdir would fail on it
            raise WriteError(f"cannot write {what} under {folder}: {existing} is a broken link.")
        existing = existing.parent
    if not existing.is_dir():
        raise WriteError(f"cannot write {what} under {folder}: {existing} is a file, not a folder.")
    clean_leftovers(existing)
    try:
        probe = _temp_name(existing, _temp_prefix("nas", "probe"))
        try:
            with open(probe, "xb") as f:
                f.write(b"\0" * 4096)  # a full disk may still create an empty file, but not store a block
                f.flush()
                os.fsync(f.fileno())
        finally:
            probe.unlink(missing_ok=True)
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
