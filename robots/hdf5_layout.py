"""Checks on an HDF5 file's bytes that libhdf5 does not make, or makes too late to stop a hang.

libhdf5 trusts a damaged file in places where trusting it never ends, or costs gigabytes:
- In single-writer/multiple-reader (SWMR) read mode it skips its truncation check and retries a
  failed metadata read with sleeps, so a truncated or corrupted file is retried for many minutes.
- A global heap collection (where variable-length strings such as attribute name lists live) whose
  object header says size 0 is walked forever at 100 % CPU, in either mode.
- A variable-length string's stated length (up to 4 GiB) is allocated and zeroed before libhdf5
  reads the heap object it points to and finds the lengths differ.

So before libhdf5 opens a file, `check_file` reads its superblock (the file's end-of-file address
and, in format version 2 and 3, its checksum and open-for-writing flags), walks every global heap
collection the way libhdf5 will, and checks the named root attributes' strings against the heap
(`hdf5_attributes`). `FlagsClearedView` presents a file whose writer died with its open-for-writing
flags cleared, so that it opens without SWMR (as `h5clear -s` would, without writing to the file).
Layouts from the HDF5 file format specification, version 3.
"""

from __future__ import annotations

import io
import os
import stat
from dataclasses import dataclass

from forethought.robots.hdf5_attributes import attribute_values
from forethought.robots.hdf5_checksum import lookup3_hash

SIGNATURE = b"\x89HDF\r\n\x1a\n"
# The superblock may sit after a user block: at 0, 512, 1024, 2048, ...
FIRST_USER_BLOCK = 512
# Superblock v2/v3 file consistency flags.
WRITE_ACCESS, SWMR_WRITE_ACCESS = 0x01, 0x04
# A global heap collection starts with "GCOL", version 1 and three reserved zero bytes.
GCOL_HEADER = b"GCOL\x01\x00\x00\x00"
# libhdf5 refuses collections smaller than this.
GCOL_MIN_SIZE = 4096
# Object indices are 16 bits, so a collection holds at most 65535 objects and its free space; more
# entries than this come from damage (and would make the walk below long).
GCOL_MAX_ENTRIES = 2 * 65536
# A trial log holds a few collections; damage that shows many more is refused.
GCOL_MAX_COLLECTIONS = 1024


class LayoutError(ValueError):
    """The file's bytes are not an HDF5 file libhdf5 can be trusted with; the message says why."""


@dataclass(frozen=True)
class Superblock:
    """What the reader needs from an HDF5 superblock.

    offset: where the superblock starts (bytes; after the user block if any).
    version: 0 to 3. sizeof_addr, sizeof_size: bytes per address and per length.
    eof: the end-of-file address, absolute (bytes): the file must be at least this long.
    flags: the file consistency flags (version 2 and 3; 0 for older versions).
    length: bytes of the superblock itself (through the checksum for version 2 and 3).
    """

    offset: int
    version: int
    sizeof_addr: int
    sizeof_size: int
    eof: int
    flags: int
    length: int

    @property
    def left_open(self) -> bool:
        """True when a writer opened the file and never closed it (it runs still, or it died)."""
        return bool(self.flags & (WRITE_ACCESS | SWMR_WRITE_ACCESS))

    @property
    def swmr_readable(self) -> bool:
        """True when libhdf5 opens the file in SWMR read mode although it is marked open."""
        return self.version >= 3 and bool(self.flags & WRITE_ACCESS) and bool(self.flags & SWMR_WRITE_ACCESS)


def _uint(data: bytes, at: int, size: int) -> int:
    return int.from_bytes(data[at : at + size], "little")


def read_superblock(data: bytes | FileBytes, file_size: int) -> Superblock:
    """Find and decode the superblock in `data`, the file's bytes."""
    offset = 0
    while data[offset : offset + len(SIGNATURE)] != SIGNATURE:
        offset = FIRST_USER_BLOCK if offset == 0 else 2 * offset
        if offset + len(SIGNATURE) > file_size:
            raise LayoutError("not an HDF5 file (no signature)")
    start = bytes(data[offset : offset + 16])
    if len(start) < 16:
        raise LayoutError(f"truncated HDF5 superblock ({file_size} bytes)")
    version = start[8]
    if version in (0, 1):
        head = offset + 24 if version == 0 else offset + 28
        sizeof_addr, sizeof_size, flags = start[13], start[14], 0
        # base address, free-space address, end-of-file address, driver information address
        eof_at, length = head + 2 * sizeof_addr, head + 4 * sizeof_addr - offset
    elif version in (2, 3):
        sizeof_addr, sizeof_size, flags = start[9], start[10], start[11]
        # base address, superblock extension address, end-of-file address, root object header address
        eof_at, length = offset + 12 + 2 * sizeof_addr, 12 + 4 * sizeof_addr + 4
    else:
        raise LayoutError(f"unsupported HDF5 superblock version {version}")
    if sizeof_addr not in (2, 4, 8) or sizeof_size not in (2, 4, 8):
        raise LayoutError(f"unsupported HDF5 address or length size ({sizeof_addr}, {sizeof_size} bytes)")
    if offset + length > file_size:
        raise LayoutError(f"truncated HDF5 superblock ({file_size} bytes)")
    if version >= 2:
        block = bytes(data[offset : offset + length - 4])
        if lookup3_hash(block) != _uint(data, offset + length - 4, 4):
            raise LayoutError("HDF5 superblock checksum mismatch")
    eof = _uint(data, eof_at, sizeof_addr)
    if eof == (1 << (8 * sizeof_addr)) - 1:
        raise LayoutError("HDF5 superblock has no end-of-file address")
    # libhdf5 takes the superblock's own position as the base address.
    return Superblock(offset, version, sizeof_addr, sizeof_size, offset + eof, flags, length)


def check_global_heaps(data: bytes | FileBytes, file_size: int, superblock: Superblock) -> dict[int, dict[int, int]]:
    """Walk every global heap collection in `data` as libhdf5 will; LayoutError if one cannot be walked.
    Returns {collection address: {object index: size in bytes}}.

    Any collection libhdf5 reads starts with GCOL_HEADER, so a search for it finds them all (an
    8-byte pattern that float data does not hold by chance). Each object starts with a header of
    index (2 bytes), reference count (2), reserved (4) and size (sizeof_size); the next object
    follows the size rounded up to 8 bytes, or, for the free space (index 0), the unrounded size.
    """
    header = len(GCOL_HEADER) + superblock.sizeof_size
    object_header = 8 + superblock.sizeof_size
    collections: dict[int, dict[int, int]] = {}  # address: {object index: size}
    at = data.find(GCOL_HEADER)
    while at >= 0:
        if len(collections) == GCOL_MAX_COLLECTIONS:
            raise LayoutError(f"more than {GCOL_MAX_COLLECTIONS} global heap collections")
        size = _uint(data, at + len(GCOL_HEADER), superblock.sizeof_size)
        if size < GCOL_MIN_SIZE or at + size > file_size:
            raise LayoutError(f"global heap collection at byte {at} has size {size} (file has {file_size} bytes)")
        end, p, objects = at + size, at + header, {}
        for _ in range(GCOL_MAX_ENTRIES + 1):
            if p + object_header > end:
                break
            index, length = _uint(data, p, 2), _uint(data, p + 8, superblock.sizeof_size)
            step = object_header + -(-length // 8) * 8 if index else length
            if step == 0 or p + step > end:
                raise LayoutError(f"damaged global heap collection at byte {at} (object at byte {p})")
            if index:
                objects[index] = length
            p += step
        else:
            raise LayoutError(f"damaged global heap collection at byte {at} (more than {GCOL_MAX_ENTRIES} objects)")
        collections[at] = objects
        at = data.find(GCOL_HEADER, at + 1)
    return collections


def check_attribute_values(
    data, file_size: int, superblock: Superblock, collections: dict[int, dict[int, int]], names: set[str]
) -> None:
    """LayoutError for a variable-length value of a root attribute in `names` that libhdf5 would
    read at a cost the file does not justify: one longer than the heap object it points to, or one
    pointing at no object (libhdf5 allocates and zeroes the stated length, up to 4 GiB, first)."""
    for value in attribute_values(data, file_size, superblock, names):
        if value.length == 0:
            continue
        size = collections.get(value.collection, {}).get(value.index)
        if size is None or value.length > size:
            found = "no heap object" if size is None else f"a {size}-byte heap object"
            raise LayoutError(
                f"attribute {value.attribute}: a value at byte {value.at} claims {value.length} bytes of {found}"
            )


class FileBytes:
    """The bytes of an open file, read on demand: data[a:b] and data.find(pattern, start).

    Not a memory map: a file that shrinks under a map (a writer closing it) kills the reader with
    SIGBUS. A read past the end, or of a file that shrank, gives fewer bytes, never an error.
    """

    _CHUNK = 1 << 20

    def __init__(self, fd: int, size: int):
        self._fd, self._size = fd, size

    def __getitem__(self, key: slice) -> bytes:
        start, stop = key.start or 0, min(key.stop, self._size)
        return os.pread(self._fd, stop - start, start) if stop > start >= 0 else b""

    def find(self, pattern: bytes, start: int = 0) -> int:
        """The first position >= start where `pattern` begins, or -1."""
        while start < self._size:
            chunk = self[start : start + self._CHUNK + len(pattern) - 1]
            found = chunk.find(pattern)
            if found >= 0:
                return start + found
            start += self._CHUNK
        return -1


@dataclass(frozen=True)
class FileCheck:
    """What `check_file` learned: the file's size (bytes) and its superblock."""

    size: int
    superblock: Superblock

    @property
    def missing(self) -> int:
        """Bytes the file lacks to reach its superblock's end-of-file address (0 for a whole file)."""
        return max(0, self.superblock.eof - self.size)


def check_file(path: str | os.PathLike, attributes: set[str] = frozenset()) -> FileCheck:
    """Check that `path` is a regular HDF5 file with a sound superblock, walkable global heaps and
    sound variable-length values in the root attributes named in `attributes`. Whether the file
    is as long as its superblock says is left to the caller (`FileCheck.missing`).

    Raises LayoutError (why) or OSError (the file cannot be read).
    """
    # O_NONBLOCK: a FIFO named like a trial must not block the reader; it is refused below.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise LayoutError("not a regular file")
        size = info.st_size
        if size < len(SIGNATURE):
            raise LayoutError(f"not an HDF5 file ({size} bytes)")
        data = FileBytes(fd, size)
        superblock = read_superblock(data, size)
        try:
            collections = check_global_heaps(data, size, superblock)
            check_attribute_values(data, size, superblock, collections, set(attributes))
        except LayoutError as err:
            if size < superblock.eof:
                raise LayoutError(f"{truncation(size, superblock.eof)}; {err}") from None
            raise
    finally:
        os.close(fd)
    return FileCheck(size, superblock)


def truncation(size: int, eof: int) -> str:
    return f"truncated file ({size} bytes, its superblock says {eof})"


class FlagsClearedView(io.RawIOBase):
    """A read-only file object over a checked file whose writer died, for h5py.File(view, "r").

    Its superblock reads with the open-for-writing flags cleared, so libhdf5 opens it without SWMR
    (and fails at once on a bad checksum instead of retrying). If the writer died mid-flush, after
    the superblock's end-of-file address grew and before the file did, the missing tail reads as
    0xFF bytes: float64 NaN, the writer's mark of rows that never reached the disk, in any data
    there, and a bad checksum or signature in any metadata there, which libhdf5 refuses at once.
    """

    def __init__(self, path: str | os.PathLike, check: FileCheck):
        super().__init__()
        superblock = check.superblock
        if superblock.version < 2:
            raise ValueError("only superblock versions 2 and 3 have consistency flags")
        self._file = open(path, "rb", buffering=0)
        try:
            self._file.seek(superblock.offset)
            block = bytearray(self._file.read(superblock.length))
        except BaseException:
            self._file.close()
            raise
        block[11] = 0  # the flags byte
        block[-4:] = lookup3_hash(bytes(block[:-4])).to_bytes(4, "little")
        self._at, self._block = superblock.offset, bytes(block)
        self._size, self._end = check.size, max(check.size, superblock.eof)
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._end}[whence]
        self._position = max(0, base + offset)
        return self._position

    def tell(self) -> int:
        return self._position

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        start = self._position
        count = min(len(view), max(0, self._end - start))
        stored = min(count, max(0, self._size - start))
        if stored:
            self._file.seek(start)
            stored = self._file.readinto(view[:stored]) or 0
        view[stored:count] = b"\xff" * (count - stored)
        low, high = max(start, self._at), min(start + count, self._at + len(self._block))
        if low < high:
            view[low - start : high - start] = self._block[low - self._at : high - self._at]
        self._position = start + count
        return count

    def close(self) -> None:
        self._file.close()
        super().close()
