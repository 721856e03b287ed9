"""The local-disk side of a lease (:class:`pipelines.outputs.lease.Lease`): the file primitives.

The protocol on a local (or network) file system, one file per lease name:

- **Create** (:func:`create`): the content goes to a temporary sibling (``storage.temp_name``),
  fsync'd, then hard-linked to the lease name; ``link`` fails when the name exists, so it is an
  exclusive create of a whole file (a run killed while creating leaves at most the temporary, which
  the next create removes). Where hard links are not supported, ``O_CREAT | O_EXCL`` then a write
  (a kill between the two leaves an unreadable lease, which counts as held until it expires).
- **Take-over** (:func:`take_over`) of an expired lease: open the file under the name, take its
  ``flock`` and check the name still refers to it, then rename it aside (one renamer wins), read what
  was moved, and create a new lease only if the moved file is the stale lease judged expired; a file
  moved aside by mistake (another run took over or renewed first) is hard-linked back under its name,
  never deleted.
- **Renewal** (:func:`renew`): read the file under the name; if it is still the holder's, write the
  new lease whole into a temporary sibling and ``os.replace`` the name with it (a reader never sees
  half a lease), holding the ``flock`` of the file read and only while the name still refers to it.
  The lock is the one a take-over takes, so neither lands between the other's check and its change.
  Where the file system has no locks (``ENOLCK``, ``ENOSYS``, ...), the renewal writes in place.
- **Release** (:func:`release`): open the file under the name, take its ``flock``, check the name
  still refers to it and that it is the holder's lease, then unlink the name while still holding
  the lock: a take-over cannot land between the check and the delete, and a lease another run took
  over before the lock is a different file, never deleted.

The lock is ``flock``: per open file (threads of one process exclude each other too), held for a few
system calls; a take-over that cannot get it within :data:`_LOCK_WAIT_S` is refused. What a lease
*says* (owner, heartbeat, expiry) is parsed by the caller; this module sees bytes and compares what
the caller's ``parse`` returns.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import time
import uuid
from collections.abc import Callable

from pipelines import storage

log = logging.getLogger(__name__)

SETTLE_TRIES = 3
SETTLE_S = 0.02
"""A lease file moved aside by mistake is back within microseconds (see :func:`_restore`)."""
_NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP}
_NO_LOCKS = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.EBADF}
_LOCK_WAIT_S = 2.0
"""A local renewal or take-over holds a lease file's lock for a few system calls (see _lock_file)."""


def create(path: str, data: bytes) -> bool:
    """Create the lease file ``path`` with ``data``, only if none exists; a reader never sees it
    without its content (a run killed while creating one leaves at most a temporary sibling)."""
    # Content first, in a temporary sibling tagged with this pid, then a hard link to the lease
    # name: link() fails when the name exists, so it is an exclusive create of a whole file.
    # (O_EXCL on the lease name itself left an empty lease when the run was killed between
    # the create and the write; the next run then believed it held the lease, built the tile
    # and refused to record it, on every rerun.)
    parent = os.path.dirname(path)
    for _ in range(5):  # the folder may vanish between makedirs and the link (see Lease.release)
        os.makedirs(parent, exist_ok=True)
        storage.clean_stale_temps(path)
        tmp = storage.temp_name(path)
        try:
            _write_synced(tmp, data)
            try:
                os.link(tmp, path)
            except OSError as exc:
                if exc.errno not in _NO_HARD_LINKS:
                    raise
                return _create_exclusive(path, data)
            return True
        except FileExistsError:
            return False
        except FileNotFoundError:
            continue
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
    raise FileNotFoundError(parent)


def _write_synced(path: str, data: bytes) -> None:
    """Write ``data`` to the file ``path`` and flush it to the disk before returning."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _create_exclusive(path: str, data: bytes) -> bool:
    """``O_CREAT | O_EXCL`` then write, for file systems without hard links: a run killed
    between the two leaves an unreadable lease (see :meth:`Lease.read`)."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return True


def take_over(path: str, stale: object, data: bytes, parse: Callable[[bytes, str], object], url: str) -> bool:
    """Replace the expired lease ``stale`` at ``path`` with ``data``, only if it is still the one
    judged expired (``parse(content, file)`` says what a file holds; ``url`` names it in logs)."""
    try:
        fd = _open_to_lock(path)
    except FileNotFoundError:
        return False
    try:  # locked, and still the file under the name: no renewal replaces it meanwhile
        if _lock_file(fd) and not _is_named(fd, path):
            return False
        return _take_over_locked(path, stale, data, parse, url)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def _take_over_locked(
    path: str, stale: object, data: bytes, parse: Callable[[bytes, str], object], url: str
) -> bool:
    aside = f"{path}.stale-{uuid.uuid4().hex}"
    try:
        os.rename(path, aside)  # one renamer wins
    except FileNotFoundError:
        return False
    try:
        with open(aside, "rb") as fh:
            moved = parse(fh.read(), aside)
        if moved != stale:
            # another run took the stale lease over (or renewed it) since this run read it:
            # its lease goes back, and this run does not hold it. (It was deleted, and this
            # run created its own: two runs held the lease and wrote the same tile.)
            _restore(path, aside, url)
            return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(aside)
    return create(path, data)


def _restore(path: str, aside: str, url: str) -> None:
    """Put a lease moved aside by mistake back under its name, only if the name is still free
    (an exclusive hard link: the same file, which its holder's renewals still find theirs). When
    a third run created a lease in that instant, that run holds it; the moved lease's holder
    finds out at its next renewal or :meth:`Lease.check`."""
    try:
        os.link(aside, path)
        return
    except FileExistsError:
        pass
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        with open(aside, "rb") as fh:
            if _create_exclusive(path, fh.read()):
                return
    log.warning("lease %s changed hands while it was restored", storage.redact_url(url))


def renew(path: str, rewrite: Callable[[bytes], bytes | None]) -> bool:
    """Replace the lease file with ``rewrite(its content)`` (None: not the caller's lease, False).

    The new lease replaces the file whole (a temporary sibling, then ``os.replace``: a reader never
    sees a half-written lease), only while the name still refers to the file read, under that
    file's lock (a take-over locks it too), so a renewal never replaces a lease another run took
    over. (An in-place rewrite let a reader see the new JSON followed by the old one's tail; a read,
    then an unlocked replace, overwrote a new holder.)"""
    for _ in range(SETTLE_TRIES):
        try:
            with open(path, "r+b") as fh:
                data = rewrite(fh.read())
                if data is None:
                    return False
                if _lock_file(fh.fileno()):
                    done = _replace_locked(path, fh.fileno(), data)
                else:  # no locks: in place (a reader may see a half-written lease)
                    fh.seek(0)
                    fh.write(data)
                    fh.truncate()
                    fh.flush()
                    os.fsync(fh.fileno())
                    done = _is_named(fh.fileno(), path)
                if done:
                    return True
        except FileNotFoundError:
            pass  # moved aside an instant by a run that then puts it back (see take_over)
        time.sleep(SETTLE_S)
    return False


def release(path: str, is_mine: Callable[[bytes], bool]) -> bool:
    """Delete the lease file ``path`` if ``is_mine(its content)``: under the file's lock (a
    take-over takes it too) and only while the name still refers to the file read, so a release
    never deletes a lease another run took over. (A read, then an unlocked delete, removed the lease
    a run had taken over in between: it went on writing without one.) ``BlockingIOError`` when
    another run holds the lock for longer than :data:`_LOCK_WAIT_S`. Where the file system has no
    locks, the check and the delete are two steps (a take-over between them is lost)."""
    for _ in range(SETTLE_TRIES):
        try:
            fd = _open_to_lock(path)
        except FileNotFoundError:
            time.sleep(SETTLE_S)  # moved aside an instant by a run that then puts it back
            continue
        with os.fdopen(fd, "rb") as fh:  # the lock is the open file's: held until the delete is done
            _lock_file(fd)
            if _is_named(fd, path):
                if not is_mine(fh.read()):
                    return False
                os.unlink(path)
                return True
    return False


def _open_to_lock(path: str) -> int:
    try:  # an exclusive lock over NFS needs the file open for writing; another user's is not
        return os.open(path, os.O_RDWR)
    except PermissionError:
        return os.open(path, os.O_RDONLY)


def _replace_locked(path: str, fd: int, data: bytes) -> bool:
    tmp = storage.temp_name(path)
    try:
        _write_synced(tmp, data)
        if not _is_named(fd, path):
            return False
        os.replace(tmp, path)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def _lock_file(fd: int) -> bool:
    """Lock the open lease file ``fd`` (``flock``: per open file, so two threads of one process
    exclude each other too; released when it is closed). False where the file system has no locks;
    ``BlockingIOError`` when another holds it for longer than :data:`_LOCK_WAIT_S`."""
    deadline = time.monotonic() + _LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(SETTLE_S / 10)
        except OSError as exc:
            if exc.errno not in _NO_LOCKS:
                raise
            return False


def _is_named(fd: int, path: str) -> bool:
    try:  # the name still refers to the open file
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False
