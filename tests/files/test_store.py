"""The content store: atomic adds, verified partial downloads, LRU collection under a cap, pins."""

from __future__ import annotations

import hashlib
import os
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from peer.files import store as store_module
from peer.files.store import STALE_PARTIAL_S, BadBlobRef, BlobBusy, BlobCorrupt, BlobMissing, BlobRef, ContentStore


def ref_of(data: bytes) -> BlobRef:
    return BlobRef(hashlib.sha256(data).hexdigest(), len(data))


def test_add_file_copies_hashes_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "store", cap_bytes=1 << 30)
    source = tmp_path / "scene.blend"
    data = os.urandom(3 * (1 << 20) + 17)
    source.write_bytes(data)
    ref = store.add_file(source)
    assert ref == ref_of(data)
    assert store.has(ref)
    blob = store.path_of(ref)
    assert blob.read_bytes() == data
    # A copy, not a link: editing the artist's file later does not change the blob.
    assert blob.stat().st_ino != source.stat().st_ino
    source.write_bytes(b"edited")
    assert blob.read_bytes() == data
    assert not stat.S_IMODE(blob.stat().st_mode) & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    assert list((tmp_path / "store" / "tmp").iterdir()) == []
    assert store.add_file(source) == ref_of(b"edited")
    assert store.add_bytes(data) == ref  # the same bytes again: nothing new
    assert store.usage_bytes() == len(data) + len(b"edited")


def test_a_failed_add_leaves_neither_blob_nor_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ContentStore(tmp_path / "store", cap_bytes=1 << 30)
    source = tmp_path / "a.png"
    source.write_bytes(b"x" * 1000)

    def crash(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        store.add_file(source)
    monkeypatch.undo()
    assert not store.has(ref_of(b"x" * 1000))
    assert list((tmp_path / "store" / "tmp").iterdir()) == []
    assert list(store.iter_blobs()) == []


def test_missing_blobs_and_bad_refs(tmp_path: Path) -> None:
    store = ContentStore(tmp_path, cap_bytes=100)
    ref = ref_of(b"nothing here")
    assert not store.has(ref)
    assert store.missing([ref, ref, store.add_bytes(b"here")]) == [ref]
    with pytest.raises(BlobMissing, match="not in the store"):
        store.path_of(ref)
    for bad in (["ab", 1], ["A" * 64, 1], ["0" * 64, -1], ["0" * 64, "1"], ["0" * 64, True], "x", ["0" * 64]):
        with pytest.raises(BadBlobRef):
            BlobRef.parse(bad)


def test_partial_download_resumes_and_is_verified(tmp_path: Path) -> None:
    store = ContentStore(tmp_path, cap_bytes=1 << 30)
    data = os.urandom(100_000)
    ref = ref_of(data)
    with store.partial_writer(ref) as w:
        assert w.offset == 0
        w.write(data[:40_000])
    assert store.partial_size(ref) == 40_000
    assert not store.has(ref)
    w = store.partial_writer(ref)
    assert w.offset == 40_000  # resumes after the bytes already there
    w.write(data[40_000:])
    w.finish()
    assert store.has(ref) and store.path_of(ref).read_bytes() == data
    assert store.partial_size(ref) == 0
    assert store.verify(ref)


def test_a_blob_whose_bytes_do_not_match_is_refused_and_deleted(tmp_path: Path) -> None:
    store = ContentStore(tmp_path, cap_bytes=1 << 30)
    data = os.urandom(5000)
    ref = ref_of(data)
    w = store.partial_writer(ref)
    w.write(data[:2000] + b"\x00" + data[2001:])
    with pytest.raises(BlobCorrupt, match="SHA-256"):
        w.finish()
    assert not store.has(ref) and store.partial_size(ref) == 0
    # More bytes than the size is refused at once.
    w = store.partial_writer(ref)
    with pytest.raises(BlobCorrupt, match="more than its size"):
        w.write(data + b"extra")
    assert store.partial_size(ref) == 0
    # Too few bytes: not stored, and the partial stays for a resume.
    w = store.partial_writer(ref)
    w.write(data[:10])
    with pytest.raises(BlobCorrupt, match="only 10 bytes"):
        w.finish()
    w.close()
    assert store.partial_size(ref) == 10


def test_a_partial_file_longer_than_the_blob_is_started_over(tmp_path: Path) -> None:
    store = ContentStore(tmp_path, cap_bytes=1 << 30)
    ref = ref_of(b"short")
    store.partial_path(ref).write_bytes(b"much longer than five bytes")
    with store.partial_writer(ref) as w:
        assert w.offset == 0
        w.write(b"short")
        w.finish()
    assert store.has(ref)


def test_one_writer_per_blob_at_a_time(tmp_path: Path) -> None:
    store = ContentStore(tmp_path, cap_bytes=1 << 30)
    ref = ref_of(b"abc")
    first = store.partial_writer(ref)
    with pytest.raises(BlobBusy):
        store.partial_writer(ref)
    first.close()
    store.partial_writer(ref).close()


def test_a_writer_being_opened_holds_its_blob_but_is_not_served_yet(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    store = ContentStore(tmp_path, cap_bytes=1 << 30)
    data = os.urandom(10_000)
    ref = ref_of(data)
    with store.partial_writer(ref) as w:
        w.write(data[:4000])  # an earlier download's bytes: the next writer hashes them again on open
    hashing, resume = threading.Event(), threading.Event()
    real_hash_file = store_module._hash_file

    def slow_hash_file(path: Path, limit: int | None = None):  # type: ignore[no-untyped-def]
        hashing.set()
        resume.wait(10)
        return real_hash_file(path, limit)

    monkeypatch.setattr(store_module, "_hash_file", slow_hash_file)
    with ThreadPoolExecutor(1) as pool:
        opening = pool.submit(store.partial_writer, ref)
        try:
            assert hashing.wait(10)
            assert store.is_writing(ref)
            assert store.receiving(ref) is None and store.receiving_offsets([ref]) == {}
            with pytest.raises(BlobBusy):
                store.partial_writer(ref)
            store.gc(now=time.time() + STALE_PARTIAL_S + 60)  # the partial file looks abandoned, but is in use
            assert store.partial_size(ref) == 4000
        finally:
            resume.set()
        writer = opening.result(10)
    assert store.receiving(ref) is writer and store.receiving_offsets([ref]) == {ref: 4000}
    writer.close()
    assert not store.is_writing(ref) and store.receiving(ref) is None
    store.gc(now=time.time() + STALE_PARTIAL_S + 60)
    assert store.partial_size(ref) == 0  # abandoned now: collected


def test_verify_removes_a_blob_damaged_on_disk(tmp_path: Path) -> None:
    store = ContentStore(tmp_path, cap_bytes=1 << 30)
    ref = store.add_bytes(b"precious pixels")
    path = store.path_of(ref)
    os.chmod(path, 0o600)
    path.write_bytes(b"precious pixelz")
    assert not store.verify(ref)
    assert not store.has(ref)


def _aged(store: ContentStore, ref: BlobRef, seconds_ago: float) -> None:
    t = time.time() - seconds_ago
    os.utime(store.blob_path(ref), (t, t))


def test_gc_removes_least_recently_used_blobs_down_to_the_cap(tmp_path: Path) -> None:
    store = ContentStore(tmp_path, cap_bytes=2500)
    refs = [store.add_bytes(bytes([i]) * 1000) for i in range(4)]
    for age, ref in zip((400, 300, 200, 100), refs):
        _aged(store, ref, age)
    store.touch(refs[0])  # used just now: the most recent
    result = store.gc(min_age_s=0)
    assert set(result.removed) == {refs[1], refs[2]}
    assert result.freed_bytes == 2000 and result.total_bytes == 2000 and not result.over_cap
    assert [store.has(r) for r in refs] == [True, False, False, True]
    assert store.gc(min_age_s=0).removed == []  # within the cap: nothing more


def test_gc_never_removes_pinned_kept_or_recent_blobs(tmp_path: Path) -> None:
    store = ContentStore(tmp_path, cap_bytes=1000)
    refs = [store.add_bytes(bytes([i]) * 1000) for i in range(5)]
    for i, ref in enumerate(refs):
        _aged(store, ref, 1000 - i)
    store.pin("job-a", [refs[0]])
    store.pin("job-b", [refs[1]])
    _aged(store, refs[3], 5)  # recently used
    result = store.gc(keep={refs[2]}, min_age_s=60)
    assert result.removed == [refs[4]]
    assert result.over_cap  # everything left is protected
    store.unpin("job-a")
    assert store.gc(keep={refs[2]}, min_age_s=60).removed == [refs[0]]
    assert store.pinned() == {refs[1]}


def test_gc_removes_stale_partial_and_temporary_files(tmp_path: Path) -> None:
    store = ContentStore(tmp_path, cap_bytes=1 << 30)
    old_part = store.partial_path(ref_of(b"old"))
    old_part.write_bytes(b"o")
    new_part = store.partial_path(ref_of(b"new"))
    new_part.write_bytes(b"n")
    old_tmp = store.tmp_dir / "x.tmp"
    old_tmp.write_bytes(b"t")
    long_ago = time.time() - 10 * 24 * 3600
    os.utime(old_part, (long_ago, long_ago))
    os.utime(old_tmp, (long_ago, long_ago))
    store.gc()
    assert not old_part.exists() and not old_tmp.exists() and new_part.exists()


def test_writes_of_many_buffers_land_in_order_and_are_hashed_once(tmp_path: Path) -> None:
    store = ContentStore(tmp_path, cap_bytes=1 << 30)  # durable: early writeback every 32 MiB runs too
    data = os.urandom(40 << 20)
    ref = ref_of(data)
    view = memoryview(data)
    with store.partial_writer(ref) as w:
        w.write_many([b""] + [view[i:i + 1000] for i in range(0, 1_000_000, 1000)])  # more buffers than one writev
        w.write_many([bytearray(view[1_000_000:20 << 20]), view[20 << 20:]])
        assert w.complete and w.offset == len(data)
        w.finish()
    assert store.path_of(ref).read_bytes() == data


def test_a_download_in_progress_is_visible_for_re_serving(tmp_path: Path) -> None:
    store = ContentStore(tmp_path, cap_bytes=1 << 30)
    data = os.urandom(10_000)
    ref, other = ref_of(data), ref_of(b"other")
    assert store.receiving(ref) is None and store.receiving_offsets([ref]) == {}
    w = store.partial_writer(ref)
    assert store.receiving(ref) is w and w.state == w.RECEIVING
    w.write(data[:4000])
    assert store.receiving_offsets([ref, other]) == {ref: 4000}
    assert store.partial_path(ref).read_bytes() == data[:4000]  # written through, readable by the routes
    w.restart()
    assert w.generation == 1 and w.offset == 0 and store.partial_size(ref) == 0
    w.write(data)
    w.finish()
    assert w.state == w.STORED and store.receiving(ref) is None and store.has(ref)

    stopped = store.partial_writer(other)
    stopped.write(b"ot")
    stopped.close()
    assert stopped.state == stopped.STOPPED and store.receiving(other) is None
    wrong = store.partial_writer(other)
    assert wrong.offset == 2
    wrong.write(b"hex")  # the right size, the wrong bytes
    generation = wrong.generation
    with pytest.raises(BlobCorrupt):
        wrong.finish()
    assert wrong.state == wrong.DISCARDED and wrong.generation > generation
    assert store.receiving(other) is None and store.partial_size(other) == 0
    assert ContentStore(tmp_path, cap_bytes=1).store_id != store.store_id
