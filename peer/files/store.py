"""A content-addressed store of files ("blobs"), keyed by SHA-256 and size.

Layout under the store's root::

    blobs/<first 2 hex>/<sha256>-<size>   complete, verified, read-only
    partial/<sha256>-<size>.part          a download in progress (resumable)
    tmp/                                  files being added; renamed into blobs/

A blob appears under ``blobs/`` only by an atomic rename after its bytes were
hashed, so a crash leaves either no blob or a complete one. Blobs are read-only
files: a checkout hard-links them, and a tool writing into a checkout file in
place must fail rather than change the blob behind its name.

A blob being downloaded can be served to other peers before it is complete
(``ContentStore.receiving``): its partial file grows in order, and
``PartialBlob.offset`` says how many bytes of it are written. Those bytes are
not verified yet; whoever fetches them verifies the whole blob itself.

"Last used" is the blob file's modification time, touched whenever the blob is
read or linked (access times are often not kept by the file system). ``gc``
removes the least recently used blobs until the store fits its size cap,
never touching blobs that are pinned (an active job's), kept by the caller,
or used in the last ``min_age_s`` seconds (just added, not yet pinned).

Everything here blocks on disk: call it from a thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import re
import stat
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator, Sequence

log = logging.getLogger(__name__)

COPY_CHUNK = 1 << 20
# At most this many buffers per writev call (POSIX guarantees 16; Linux takes 1024).
MAX_IOV = 256
# Received bytes are hashed and written this much at a time (fits a core's L2 cache).
CACHE_SLICE = 512 << 10
# A download asks the OS to start writing its bytes to disk every this many bytes, so the
# one fsync at the end finds little left to write.
WRITEBACK_STEP = 32 << 20
MAX_BLOB_SIZE = 1 << 44  # 16 TiB: larger sizes from the network are nonsense
# Partial downloads nobody resumed in this long are removed by gc.
STALE_PARTIAL_S = 3 * 24 * 3600
STALE_TMP_S = 3600

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_BLOB_NAME = re.compile(r"^([0-9a-f]{64})-(\d+)$")


class StoreError(Exception):
    """A store operation failed; ``str()`` names the blob and the cause."""


class BadBlobRef(StoreError, ValueError):
    """A (sha256, size) pair that is not well formed (from the network, a manifest)."""


class BlobMissing(StoreError):
    """The store does not hold that blob."""


class BlobCorrupt(StoreError):
    """Bytes received for a blob do not have its size or SHA-256; the partial file was deleted."""


class BlobBusy(StoreError):
    """Another download of the same blob is in progress in this process."""


@dataclass(frozen=True, order=True)
class BlobRef:
    """A blob's identity: lowercase hex SHA-256 of its bytes, and their count."""

    sha256: str
    size: int

    def __post_init__(self) -> None:
        if not isinstance(self.sha256, str) or not _SHA256.match(self.sha256):
            raise BadBlobRef(f"{self.sha256!r} is not a SHA-256: expected 64 lowercase hex digits")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or not 0 <= self.size <= MAX_BLOB_SIZE:
            raise BadBlobRef(f"blob size {self.size!r} of {self.sha256[:12]} must be an integer from 0 to {MAX_BLOB_SIZE}")

    @classmethod
    def parse(cls, value: object) -> BlobRef:
        """From the wire form ``[sha256, size]``; raises ``BadBlobRef``."""
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise BadBlobRef(f"a blob is sent as [sha256, size], got {value!r:.80}")
        return cls(value[0], value[1])

    def to_wire(self) -> list[object]:
        return [self.sha256, self.size]

    @property
    def key(self) -> str:
        return f"{self.sha256}-{self.size}"

    @property
    def short(self) -> str:
        return f"{self.sha256[:12]} ({self.size} bytes)"


@dataclass(frozen=True)
class GcResult:
    removed: list[BlobRef]
    freed_bytes: int
    total_bytes: int  # blobs left
    cap_bytes: int

    @property
    def over_cap(self) -> bool:
        """Still above the cap: everything left is pinned, kept or recently used."""
        return self.total_bytes > self.cap_bytes


def _hash_file(path: Path, limit: int | None = None) -> tuple[hashlib._Hash, int]:
    digest = hashlib.sha256()
    done = 0
    buffer = bytearray(COPY_CHUNK)  # reused: fresh buffers per chunk cost page faults
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while limit is None or done < limit:
            want = COPY_CHUNK if limit is None else min(COPY_CHUNK, limit - done)
            n = f.readinto(view[:want])
            if not n:
                break
            digest.update(view[:n])
            done += n
    return digest, done


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":
        return  # Windows cannot open a directory for fsync; NTFS journals the rename
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except PermissionError:
        # Windows refuses to delete read-only files.
        os.chmod(path, stat.S_IWRITE | stat.S_IREAD)
        path.unlink(missing_ok=True)


@dataclass
class _Pins:
    by_owner: dict[str, frozenset[BlobRef]] = field(default_factory=dict)

    def all(self) -> set[BlobRef]:
        out: set[BlobRef] = set()
        for refs in self.by_owner.values():
            out.update(refs)
        return out


class ContentStore:
    """Blobs on disk under ``root``, at most ``cap_bytes`` of them after ``gc``."""

    def __init__(self, root: Path, cap_bytes: int, *, durable: bool = True) -> None:
        self.root = Path(root)
        self.cap_bytes = int(cap_bytes)
        # fsync before a blob becomes visible: after a power cut a blob is whole or absent.
        self.durable = durable
        self.blobs_dir = self.root / "blobs"
        self.partial_dir = self.root / "partial"
        self.tmp_dir = self.root / "tmp"
        for folder in (self.blobs_dir, self.partial_dir, self.tmp_dir):
            os.makedirs(folder, exist_ok=True)
        # Tells a fetcher when a source it was given is this very store.
        self.store_id = uuid.uuid4().hex
        self._lock = threading.Lock()
        # Downloads in progress (one per blob), for re-serving; None while one is being opened.
        self._receiving: dict[str, PartialBlob | None] = {}
        self._pins = _Pins()

    # --- where things are --------------------------------------------------------------

    def blob_path(self, ref: BlobRef) -> Path:
        """Where the blob lives (whether or not it is there)."""
        return self.blobs_dir / ref.sha256[:2] / ref.key

    def partial_path(self, ref: BlobRef) -> Path:
        return self.partial_dir / f"{ref.key}.part"

    def has(self, ref: BlobRef) -> bool:
        try:
            return self.blob_path(ref).stat().st_size == ref.size
        except OSError:
            return False

    def missing(self, refs: Iterable[BlobRef]) -> list[BlobRef]:
        """The blobs of ``refs`` not in the store, each once, in order."""
        seen: set[BlobRef] = set()
        out = []
        for ref in refs:
            if ref not in seen and not self.has(ref):
                out.append(ref)
            seen.add(ref)
        return out

    def path_of(self, ref: BlobRef, *, touch: bool = True) -> Path:
        """The blob's file, for reading or hard-linking; raises ``BlobMissing``."""
        path = self.blob_path(ref)
        if not self.has(ref):
            raise BlobMissing(f"blob {ref.short} is not in the store at {self.root}")
        if touch:
            self.touch(ref)
        return path

    def open_blob(self, ref: BlobRef) -> BinaryIO:
        return open(self.path_of(ref), "rb")

    def touch(self, ref: BlobRef) -> None:
        """Mark the blob as used now (for the LRU order of ``gc``)."""
        try:
            os.utime(self.blob_path(ref))
        except OSError:
            pass

    def partial_size(self, ref: BlobRef) -> int:
        """Bytes of ``ref`` already downloaded (0 when no partial file exists)."""
        try:
            return self.partial_path(ref).stat().st_size
        except OSError:
            return 0

    def iter_blobs(self) -> Iterator[tuple[BlobRef, os.stat_result]]:
        for sub in self.blobs_dir.iterdir():
            if not sub.is_dir():
                continue
            for entry in sub.iterdir():
                match = _BLOB_NAME.match(entry.name)
                if not match:
                    continue
                try:
                    st = entry.stat()
                except OSError:
                    continue
                yield BlobRef(match.group(1), int(match.group(2))), st

    def usage_bytes(self) -> int:
        return sum(st.st_size for _, st in self.iter_blobs())

    # --- adding ------------------------------------------------------------------------

    def _tmp_file(self) -> Path:
        return self.tmp_dir / f"{uuid.uuid4().hex}.tmp"

    def _commit(self, tmp: Path, ref: BlobRef) -> Path:
        """Make ``tmp`` (already verified to be ``ref``) the blob, atomically."""
        final = self.blob_path(ref)
        if self.has(ref):
            _unlink(tmp)  # someone else stored the same bytes first
            self.touch(ref)
            return final
        final.parent.mkdir(exist_ok=True)
        os.chmod(tmp, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        os.replace(tmp, final)
        if self.durable:
            _fsync_dir(final.parent)
        return final

    def add_file(self, source: Path) -> BlobRef:
        """Copy ``source`` into the store, hashing while copying, and return its ref.

        Always a copy, never a link to ``source``: the artist may edit that file
        while a job still needs the version that was submitted.
        """
        tmp = self._tmp_file()
        digest = hashlib.sha256()
        size = 0
        buffer = bytearray(COPY_CHUNK)
        view = memoryview(buffer)
        try:
            with open(source, "rb", buffering=0) as src, open(tmp, "wb", buffering=0) as dst:
                while n := src.readinto(buffer):
                    digest.update(view[:n])
                    dst.write(view[:n])
                    size += n
                if self.durable:
                    os.fsync(dst.fileno())
            ref = BlobRef(digest.hexdigest(), size)
            self._commit(tmp, ref)
            return ref
        finally:
            _unlink(tmp)

    def add_bytes(self, data: bytes) -> BlobRef:
        ref = BlobRef(hashlib.sha256(data).hexdigest(), len(data))
        if self.has(ref):
            self.touch(ref)
            return ref
        tmp = self._tmp_file()
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                if self.durable:
                    f.flush()
                    os.fsync(f.fileno())
            self._commit(tmp, ref)
        finally:
            _unlink(tmp)
        return ref

    def partial_writer(self, ref: BlobRef) -> PartialBlob:
        """A writer that appends the bytes of ``ref`` after those already downloaded.

        Raises ``BlobBusy`` while another writer of the same blob is open in this process.
        """
        with self._lock:
            if ref.key in self._receiving:
                raise BlobBusy(f"blob {ref.short} is already being downloaded by this peer")
            self._receiving[ref.key] = None  # reserved: opening may hash a long partial file
        try:
            writer = PartialBlob(self, ref)
        except BaseException:
            self._release(ref)
            raise
        with self._lock:
            self._receiving[ref.key] = writer
        return writer

    def _release(self, ref: BlobRef) -> None:
        with self._lock:
            self._receiving.pop(ref.key, None)

    def receiving(self, ref: BlobRef) -> PartialBlob | None:
        """The download of ``ref`` in progress in this process, if any (to serve its bytes so far)."""
        with self._lock:
            return self._receiving.get(ref.key)

    def receiving_offsets(self, refs: Iterable[BlobRef]) -> dict[BlobRef, int]:
        """For the blobs of ``refs`` being downloaded now: how many bytes of each are written."""
        with self._lock:
            found = {ref: self._receiving.get(ref.key) for ref in refs}
        return {ref: w.offset for ref, w in found.items() if w is not None}

    def is_writing(self, ref: BlobRef) -> bool:
        with self._lock:
            return ref.key in self._receiving

    # --- checking and removing ---------------------------------------------------------

    def verify(self, ref: BlobRef) -> bool:
        """Hash the stored blob again; a damaged one is removed (so it is fetched again)."""
        path = self.blob_path(ref)
        try:
            digest, size = _hash_file(path)
        except FileNotFoundError:
            return False
        if size == ref.size and digest.hexdigest() == ref.sha256:
            return True
        log.warning("blob %s is damaged on disk (%s); removing it so it is fetched again", ref.short, path)
        _unlink(path)
        return False

    def remove(self, ref: BlobRef) -> None:
        _unlink(self.blob_path(ref))

    # --- pinning and collection --------------------------------------------------------

    def pin(self, owner: str, refs: Iterable[BlobRef]) -> None:
        """Keep ``refs`` through every ``gc`` until ``unpin(owner)`` (``owner``: e.g. a job id)."""
        with self._lock:
            self._pins.by_owner[owner] = self._pins.by_owner.get(owner, frozenset()) | frozenset(refs)

    def unpin(self, owner: str) -> None:
        with self._lock:
            self._pins.by_owner.pop(owner, None)

    def pinned(self) -> set[BlobRef]:
        with self._lock:
            return self._pins.all()

    def gc(self, keep: Iterable[BlobRef] = (), *, min_age_s: float = 600.0, now: float | None = None) -> GcResult:
        """Remove least recently used blobs until the store is within its cap.

        Blobs in ``keep``, pinned ones and those used within ``min_age_s`` stay.
        Stale partial and temporary files are removed too.
        """
        now = time.time() if now is None else now
        self._remove_stale(self.partial_dir, STALE_PARTIAL_S, now)
        self._remove_stale(self.tmp_dir, STALE_TMP_S, now)
        protected = set(keep) | self.pinned()
        blobs = sorted(self.iter_blobs(), key=lambda item: item[1].st_mtime)
        total = sum(st.st_size for _, st in blobs)
        removed: list[BlobRef] = []
        freed = 0
        for ref, st in blobs:
            if total <= self.cap_bytes:
                break
            if ref in protected or now - st.st_mtime < min_age_s:
                continue
            _unlink(self.blob_path(ref))
            removed.append(ref)
            freed += st.st_size
            total -= st.st_size
        if removed:
            log.info("store gc: removed %d blobs, %d bytes; %d bytes left (cap %d)",
                     len(removed), freed, total, self.cap_bytes)
        return GcResult(removed=removed, freed_bytes=freed, total_bytes=total, cap_bytes=self.cap_bytes)

    def _remove_stale(self, folder: Path, age_s: float, now: float) -> None:
        for entry in folder.iterdir():
            try:
                if now - entry.stat().st_mtime > age_s:
                    key = entry.name.removesuffix(".part")
                    with self._lock:
                        busy = key in self._receiving
                    if not busy:
                        _unlink(entry)
            except OSError:
                continue


class PartialBlob:
    """Appends downloaded bytes of one blob; ``finish`` verifies and stores it.

    Bytes already on disk from an earlier, interrupted download are kept and
    hashed again on open, so a download resumes at ``offset``. ``close`` keeps
    the partial file for a later resume; a size or hash mismatch deletes it.

    Bytes are hashed as they are written, so finishing needs no second read
    pass; the file is flushed to disk once, by ``finish``. While the download
    runs, the routes serve its first ``offset`` bytes to other peers: ``state``
    and ``generation`` tell them whether more will come and whether what they
    sent is still what the file holds.
    """

    RECEIVING = "receiving"
    STORED = "stored"  # verified and in the store, under ``store.blob_path(ref)``
    STOPPED = "stopped"  # closed before the end; the bytes so far stay for a resume
    DISCARDED = "discarded"  # the bytes were wrong and are gone

    def __init__(self, store: ContentStore, ref: BlobRef) -> None:
        self.store = store
        self.ref = ref
        self.path = store.partial_path(ref)
        self.state = self.RECEIVING
        self.generation = 0  # bumped whenever bytes already written are dropped
        self._closed = False
        existing = self.path.stat().st_size if self.path.exists() else 0
        if existing > ref.size:
            _unlink(self.path)  # cannot be a prefix of this blob
            existing = 0
        self._digest, self.offset = _hash_file(self.path, existing) if existing else (hashlib.sha256(), 0)
        # Unbuffered: every write goes straight to the file, where the routes can read it.
        self._file = open(self.path, "r+b" if existing else "wb", buffering=0)
        self._file.seek(self.offset)
        self._file.truncate()
        self._writeback_from = self.offset  # bytes before this were handed to the disk early

    def write(self, data: bytes) -> None:
        self.write_many([data])

    def write_many(self, chunks: Sequence[bytes | bytearray | memoryview]) -> None:
        """Append ``chunks``, hashing them on the way (small ones go to the file together, by ``writev``)."""
        total = sum(len(chunk) for chunk in chunks)
        if self.offset + total > self.ref.size:
            got = self.offset + total
            self.discard()
            raise BlobCorrupt(f"blob {self.ref.short}: received at least {got} bytes, more than its size; discarded")
        # Hash and write a slice at a time, so the write reads what hashing just brought into the
        # CPU cache rather than memory again: a fifth less CPU when several downloads share a machine.
        fd = self._file.fileno()
        group: list[memoryview] = []
        grouped = 0
        for chunk in chunks:
            view = memoryview(chunk).cast("B")
            for start in range(0, len(view), CACHE_SLICE):
                piece = view[start:start + CACHE_SLICE]
                self._digest.update(piece)
                group.append(piece)
                grouped += len(piece)
                if grouped >= CACHE_SLICE:
                    _write_all(fd, group)
                    group, grouped = [], 0
        _write_all(fd, group)
        self.offset += total  # only now may others read these bytes
        if self.store.durable and _start_writeback and self.offset - self._writeback_from >= WRITEBACK_STEP:
            _start_writeback(self._file.fileno(), self._writeback_from, self.offset - self._writeback_from)
            self._writeback_from = self.offset

    def restart(self) -> None:
        """Drop the bytes so far (the source sent the whole blob instead of the rest)."""
        self.generation += 1
        self.offset = self._writeback_from = 0
        self._file.seek(0)
        self._file.truncate()
        self._digest = hashlib.sha256()

    @property
    def complete(self) -> bool:
        return self.offset == self.ref.size

    def finish(self) -> Path:
        """Check size and SHA-256, then move the blob into the store; raises ``BlobCorrupt``."""
        if self.offset != self.ref.size:
            raise BlobCorrupt(f"blob {self.ref.short}: only {self.offset} bytes received")
        actual = self._digest.hexdigest()
        if actual != self.ref.sha256:
            self.discard()
            raise BlobCorrupt(
                f"blob {self.ref.short}: the received bytes have SHA-256 {actual[:12]}, not {self.ref.sha256[:12]}: "
                "corrupted on the way or at the source; discarded"
            )
        if self.store.durable:
            os.fsync(self._file.fileno())
        self._close_file()
        try:
            final = self.store._commit(self.path, self.ref)
            self.state = self.STORED
            return final
        finally:
            _unlink(self.path)
            self._release()

    def _close_file(self) -> None:
        if not self._file.closed:
            self._file.close()

    def _release(self) -> None:
        if not self._closed:
            self._closed = True
            if self.state == self.RECEIVING:
                self.state = self.STOPPED
            self.store._release(self.ref)

    def close(self) -> None:
        """Stop writing; the bytes so far stay for a resume."""
        self._close_file()
        self._release()

    def discard(self) -> None:
        self.state = self.DISCARDED
        self.generation += 1
        self._close_file()
        _unlink(self.path)
        self._release()

    def __enter__(self) -> PartialBlob:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _load_libc() -> ctypes.CDLL | None:
    """The C library this process runs with, on Linux (glibc or musl); None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


# Shared with ``transfer.py``, which tunes the allocator through it.
LIBC = _load_libc()


def _writeback_function() -> Callable[[int, int, int], None] | None:
    """Linux's ``sync_file_range(SYNC_FILE_RANGE_WRITE)``: start writing a range to disk, without
    waiting for it or for the file's metadata. None elsewhere (the final fsync does it all)."""
    call = getattr(LIBC, "sync_file_range", None)  # None without a libc, or with one that lacks it
    if call is None:
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    call.restype = ctypes.c_int
    sync_file_range_write = 2

    def start(fd: int, offset: int, length: int) -> None:
        call(fd, offset, length, sync_file_range_write)  # a failure only means the fsync does more

    return start


_start_writeback = _writeback_function()


def _write_all(fd: int, chunks: Sequence[bytes | bytearray | memoryview]) -> None:
    """Write every byte of ``chunks`` to ``fd``, continuing after short writes."""
    views = [memoryview(chunk).cast("B") for chunk in chunks if len(chunk)]
    first = 0
    while first < len(views):
        if hasattr(os, "writev"):
            written = os.writev(fd, views[first:first + MAX_IOV])
        else:  # Windows
            written = os.write(fd, views[first])
        while written:
            size = len(views[first])
            if written >= size:
                written -= size
                first += 1
            else:
                views[first] = views[first][written:]
                written = 0
