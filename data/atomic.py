"""Atomic file output: write to a temporary sibling, rename on success, remove it on any failure."""
from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Iterator

_OUT_OF_ROOM = (errno.EFBIG, errno.ENOSPC, errno.EDQUOT)  # write errors that carry no file name


def _name_output(e: BaseException, dest: Path) -> None:
    """Give an out-of-room write error the output's name ("File too large" alone does not say which file)."""
    if isinstance(e, OSError) and e.errno in _OUT_OF_ROOM and e.filename is None:
        e.filename = str(dest)


def _file_in_the_way(dest: Path) -> Path | None:
    """The nearest existing ancestor of ``dest`` when it is not a folder (a file used as one), else None."""
    for parent in dest.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


@contextlib.contextmanager
def _naming_the_output(dest: Path) -> Iterator[None]:
    """Reword an OSError while making the output's folder or temporary to name the output the user asked for (the
    hidden temporary's name, or a parent's alone, does not say which output failed)."""
    try:
        yield
    except OSError as e:
        blocker = _file_in_the_way(dest)
        if blocker is not None:
            raise NotADirectoryError(errno.ENOTDIR, f"cannot write {dest}: {blocker} is not a folder") from e
        raise OSError(e.errno, f"cannot write {dest}: {e.strerror or e}") from e


_NO_FOLDER_SYNC = (errno.EINVAL, errno.EBADF, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EACCES, errno.EPERM)


def fsync_path(path: Path) -> None:
    """Flush a file, or a folder's list of entries (so a rename inside it survives a power loss), to the disk. A
    folder is flushed where the system allows it (some file systems refuse, as PostgreSQL also tolerates)."""
    folder = path.is_dir()
    if folder and os.name != "posix":   # folders cannot be opened for syncing elsewhere
        return
    fd = os.open(path, os.O_RDONLY if folder else os.O_RDWR)   # Windows flushes only files open for writing
    try:
        os.fsync(fd)
    except OSError as e:
        if not (folder and e.errno in _NO_FOLDER_SYNC):
            raise
    finally:
        os.close(fd)


def _umask() -> int:
    """The process umask: from /proc where Linux shows it; elsewhere reading it means setting it (set straight back,
    though a file another thread makes meanwhile misses it)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _target(path: str | os.PathLike) -> Path:
    """The path an output is written to, its folder resolved as the kernel would (links and ``..`` in order; a
    textual collapse of ``..`` would skip a link before it), so that moving an old output folder aside cannot move
    the paths (a relative one inside it would). A symbolic link of the user's own to an existing file or folder is
    written through, as cp and ffmpeg do; any other link (dangling, or another user's in a shared folder such as
    /tmp) is replaced itself, never followed."""
    given = Path(path).absolute()
    p = Path(os.path.realpath(given.parent)) / given.name
    try:
        if p.is_symlink() and p.lstat().st_uid == os.geteuid() and p.exists():
            return Path(os.path.realpath(p))
    except OSError:
        pass
    return p


def _mode(dest: Path, default: int) -> int:
    """The permissions an output gets: those of the file or folder it replaces (read and write bits, and a folder's
    setgid; no setuid or sticky bit carried to new contents), else ``default`` under the umask."""
    try:
        st = dest.stat()
    except OSError:
        return default & ~_umask()
    return st.st_mode & (0o2777 if stat.S_ISDIR(st.st_mode) else 0o777)


def _make_parent(dest: Path) -> Path | None:
    """Make ``dest``'s folder and its missing parents; the topmost one made (None if all existed)."""
    top = None
    for parent in [dest.parent, *dest.parent.parents]:
        if parent.exists():
            break
        top = parent
    dest.parent.mkdir(parents=True, exist_ok=True)
    return top


def _remove_made(dest: Path, top: Path | None) -> None:
    """After a failure, remove the folders ``_make_parent`` made for ``dest`` that stayed empty, deepest first (a
    failed command leaves no empty folders behind; a folder something else wrote into meanwhile stays)."""
    if top is None:
        return
    for folder in [dest.parent, *dest.parent.parents]:
        try:
            folder.rmdir()
        except OSError:
            return
        if folder == top:
            return


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on clean exit rename it onto ``path``, else delete it.

    The temporary name keeps the destination's suffix (or ``suffix``) so format-sniffing writers
    such as FFmpeg's muxers pick the right container. Ctrl-C and errors leave no partial file. ``durable`` also
    flushes the file before the rename and the folder after it, so a power loss keeps the old file or the new one.
    """
    dest = _target(path)
    with _naming_the_output(dest):
        made = _make_parent(dest)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=dest.suffix if suffix is None else suffix,
                                   dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp makes files owner-only; give outputs the replaced file's or the umask's
            if durable:   # before the mode: a read-only one would refuse the write handle fsync opens
                fsync_path(tmp_path)
            os.chmod(tmp_path, _mode(dest, 0o666))
        os.replace(tmp_path, dest)
        if durable:
            fsync_path(dest.parent)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        _remove_made(dest, made)
        _name_output(e, dest)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; on success it replaces ``path`` (an old folder there is moved
    aside first and removed only once the new one is in place), on any failure it is removed. ``durable`` flushes
    the folder's files and entries before the rename and the parent folder after it (see ``atomic_path``)."""
    import shutil

    dest = _target(path)
    with _naming_the_output(dest):
        made = _make_parent(dest)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    old = None
    try:
        yield tmp
        os.chmod(tmp, _mode(dest, 0o777))  # mkdtemp makes owner-only folders: the replaced one's mode, or usual
        if durable:
            for item in tmp.iterdir():
                fsync_path(item)
            fsync_path(tmp)
        if dest.is_dir():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old.", dir=dest.parent))
            os.replace(dest, old / dest.name)
        os.replace(tmp, dest)
        if durable:
            fsync_path(dest.parent)
    except BaseException as e:
        if old is not None and not dest.exists():
            os.replace(old / dest.name, dest)
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        _remove_made(dest, made)
        _name_output(e, dest)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_bytes_atomic(path: str | os.PathLike, data: bytes, durable: bool = False) -> None:
    """Write ``data`` to ``path`` atomically (``durable``: see ``atomic_path``)."""
    with atomic_path(path, durable=durable) as tmp:
        tmp.write_bytes(data)


def save_safetensors(tensors: dict, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """``safetensors.torch.save_file``, its write failures (a full disk) raised as the OSError they are: safetensors
    reports them as a SafetensorError, which is no OSError, so they escaped as tracebacks."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as e:
        found = re.search(r"I/O error: (.*?)(?: \(os error (\d+)\)|$)", str(e))   # newer versions add the path
        if found is None:
            raise
        raise OSError(int(found[2] or errno.EIO), found[1]) from e
