"""The variable-length values of a root group's attributes, found in an HDF5 file's bytes.

libhdf5 reads a variable-length value (a string) by allocating and zeroing its stated length
(4 bytes: up to 4 GiB) before it reads the global heap object the value points to, so one damaged
length costs gigabytes and seconds before libhdf5 notices. `attribute_values` finds each value of
the named attributes of the root group so that the caller can check it against the heap first.

The walk follows the HDF5 file format specification (version 3): the root object header (version
1, or 2 with "OHDR"/"OCHK" chunks), its attribute messages (0x000C) and, for dense storage, the
attribute info message (0x0015), its version 2 B-tree of names (records of type 8) and its fractal
heap of attribute messages. It stops where it meets anything it does not expect (a layout a
trial log does not use, or damage that libhdf5 itself refuses): it finds what it can and never
raises. A record's name hash (lookup3) must match the message found, so a misread offset is not
taken for an attribute.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

from forethought.robots.hdf5_checksum import lookup3_hash

if TYPE_CHECKING:
    from forethought.robots.hdf5_layout import Superblock

OBJECT_HEADER_V2 = b"OHDR"
CONTINUATION_V2 = b"OCHK"
MSG_ATTRIBUTE, MSG_CONTINUATION, MSG_ATTRIBUTE_INFO = 0x000C, 0x0010, 0x0015
VLEN_CLASS = 9
# Bounds on the walk, far above what a trial log holds.
MAX_CHUNKS = 64
MAX_MESSAGES = 4096


class _Stop(Exception):
    """The walk met something it does not read; what it found so far stands."""


@dataclass(frozen=True)
class VlenValue:
    """One variable-length value: the attribute's name, where the value is (bytes), its stated
    length, and the global heap object it points to (collection address, absolute; object index)."""

    attribute: str
    at: int
    length: int
    collection: int
    index: int


class _Bytes:
    """Bounds-checked little-endian reads of the file's bytes."""

    def __init__(self, data, size: int, superblock: Superblock):
        self.data, self.size, self.base = data, size, superblock.offset
        self.O, self.L = superblock.sizeof_addr, superblock.sizeof_size
        self.undefined = (1 << (8 * self.O)) - 1

    def raw(self, at: int, n: int) -> bytes:
        if at < 0 or n < 0 or at + n > self.size:
            raise _Stop
        data = bytes(self.data[at : at + n])
        if len(data) != n:  # the file shrank while it was read
            raise _Stop
        return data

    def uint(self, at: int, n: int) -> int:
        return int.from_bytes(self.raw(at, n), "little")

    def address(self, at: int) -> int:
        """An address field, made absolute; _Stop if undefined."""
        value = self.uint(at, self.O)
        if value == self.undefined:
            raise _Stop
        return self.base + value


def attribute_values(data, size: int, superblock: Superblock, names: set[str]) -> Iterator[VlenValue]:
    """The variable-length values of the root group's attributes named in `names` that the walk finds."""
    reader = _Bytes(data, size, superblock)
    try:
        if superblock.version < 2:
            # Root symbol table entry: link name offset, then the object header address.
            entry = superblock.offset + (24 if superblock.version == 0 else 28) + 4 * reader.O
            root = reader.address(entry + reader.O)
        else:
            root = reader.address(superblock.offset + 12 + 3 * reader.O)
        yield from _header_values(reader, root, names)
    except _Stop:
        return


def _header_values(reader: _Bytes, header: int, names: set[str]) -> Iterator[VlenValue]:
    dense = None
    for kind, body, length in _messages(reader, header):
        if kind == MSG_ATTRIBUTE:
            yield from _attribute_message_values(reader, body, length, names)
        elif kind == MSG_ATTRIBUTE_INFO:
            dense = body
    if dense is not None:
        yield from _dense_values(reader, dense, names)


def _messages(reader: _Bytes, header: int) -> Iterator[tuple[int, int, int]]:
    """(message type, body address, body size) of an object header's messages, over all its chunks."""
    if reader.raw(header, 4) == OBJECT_HEADER_V2:
        if reader.uint(header + 4, 1) != 2:
            raise _Stop
        flags = reader.uint(header + 5, 1)
        at = header + 6 + (16 if flags & 0x20 else 0) + (4 if flags & 0x10 else 0)
        width = 1 << (flags & 0x03)
        first = at + width
        chunks = [(first, first + reader.uint(at, width))]
        prefix = 6 if flags & 0x04 else 4  # type (1), size (2), flags (1), creation order (2)
        version = 2
    else:
        if reader.uint(header, 1) != 1:
            raise _Stop
        chunks = [(header + 16, header + 16 + reader.uint(header + 8, 4))]
        prefix, version = 8, 1  # type (2), size (2), flags (1), reserved (3)
    seen, messages = {header}, 0
    while chunks:
        start, end = chunks.pop(0)
        at = start
        while at + prefix <= end:
            if version == 1:
                kind, length = reader.uint(at, 2), reader.uint(at + 2, 2)
            else:
                kind, length = reader.uint(at, 1), reader.uint(at + 1, 2)
            body = at + prefix
            if body + length > end:
                raise _Stop
            messages += 1
            if messages > MAX_MESSAGES:
                raise _Stop
            if kind == MSG_CONTINUATION:
                chunk, chunk_length = reader.address(body), reader.uint(body + reader.O, reader.L)
                if chunk in seen or len(seen) > MAX_CHUNKS:
                    raise _Stop
                seen.add(chunk)
                if version == 2:
                    if reader.raw(chunk, 4) != CONTINUATION_V2:
                        raise _Stop
                    chunks.append((chunk + 4, chunk + chunk_length - 4))  # signature, ..., checksum
                else:
                    chunks.append((chunk, chunk + chunk_length))
            else:
                yield kind, body, length
            at = body + length


def _padded(n: int, version: int) -> int:
    return -(-n // 8) * 8 if version == 1 else n


def _attribute_message(reader: _Bytes, body: int, length: int) -> tuple[str, int, int, int, int]:
    """(name, datatype address, dataspace address, data address, message end) of an attribute message."""
    version = reader.uint(body, 1)
    if version not in (1, 2, 3):
        raise _Stop
    if version > 1 and reader.uint(body + 1, 1) & 0x03:
        raise _Stop  # a shared datatype or dataspace: not in a trial log
    name_size, type_size, space_size = reader.uint(body + 2, 2), reader.uint(body + 4, 2), reader.uint(body + 6, 2)
    at = body + (9 if version == 3 else 8)
    name = reader.raw(at, name_size).split(b"\0", 1)[0].decode("utf-8", "replace")
    datatype = at + _padded(name_size, version)
    dataspace = datatype + _padded(type_size, version)
    values = dataspace + _padded(space_size, version)
    return name, datatype, dataspace, values, body + length


def _elements(reader: _Bytes, dataspace: int) -> int:
    version, rank = reader.uint(dataspace, 1), reader.uint(dataspace + 1, 1)
    if version == 1:
        dims = dataspace + 8
    elif version == 2:
        if reader.uint(dataspace + 3, 1) == 2:
            return 0  # null dataspace
        dims = dataspace + 4
    else:
        raise _Stop
    count = 1
    for d in range(rank):
        count *= reader.uint(dims + d * reader.L, reader.L)
    return count


def _attribute_message_values(reader: _Bytes, body: int, length: int, names: set[str]) -> Iterator[VlenValue]:
    name, datatype, dataspace, values, end = _attribute_message(reader, body, length)
    if name not in names or reader.uint(datatype, 1) & 0x0F != VLEN_CLASS:
        return
    # On disk a value is its length (4 bytes), a collection address and an object index (4 bytes).
    width = 4 + reader.O + 4
    count = _elements(reader, dataspace)
    if values + count * width > end:
        raise _Stop  # libhdf5 refuses an attribute whose data overruns its message
    for i in range(count):
        at = values + i * width
        yield VlenValue(name, at, reader.uint(at, 4), reader.address(at + 4), reader.uint(at + 4 + reader.O, 4))


# -- Dense attribute storage: a fractal heap of messages indexed by a version 2 B-tree of names -----
@dataclass(frozen=True)
class _FractalHeap:
    id_size: int  # bytes of a heap ID
    id_offset_size: int  # bytes of a managed object's offset in its ID
    id_length_size: int  # bytes of a managed object's length in its ID
    table_width: int
    start_block: int  # bytes
    max_direct: int  # bytes
    root: int  # absolute address
    root_rows: int  # 0: the root is a direct block
    huge_tree: int | None  # absolute address of the B-tree of objects too large to manage


def _bytes_for_bits(bits: int) -> int:
    return (bits + 7) // 8


def _fractal_heap(reader: _Bytes, at: int) -> _FractalHeap:
    O, L = reader.O, reader.L
    if reader.raw(at, 4) != b"FRHP" or reader.uint(at + 4, 1) != 0:
        raise _Stop
    if reader.uint(at + 7, 2):
        raise _Stop  # filtered heap blocks: not in a trial log
    id_size, max_managed = reader.uint(at + 5, 2), reader.uint(at + 10, 4)
    huge_tree = reader.uint(at + 14 + L, O)
    p = at + 14 + L + O + L + O + 3 * L + L + 4 * L
    width = reader.uint(p, 2)
    start_block, max_direct = reader.uint(p + 2, L), reader.uint(p + 2 + L, L)
    p += 2 + 2 * L
    max_heap_bits = reader.uint(p, 2)
    root = reader.address(p + 4)
    root_rows = reader.uint(p + 4 + O, 2)
    if not width or start_block <= 0 or max_direct < start_block or max_managed <= 0:
        raise _Stop
    if start_block & (start_block - 1) or max_direct & (max_direct - 1):
        raise _Stop  # both are powers of two
    log2_direct = max_direct.bit_length() - 1
    length_size = min(_bytes_for_bits(log2_direct), (max_managed.bit_length() - 1) // 8 + 1)
    huge_tree = None if huge_tree == reader.undefined else reader.base + huge_tree
    return _FractalHeap(
        id_size, _bytes_for_bits(max_heap_bits), length_size, width, start_block, max_direct, root, root_rows, huge_tree
    )


def _heap_object(reader: _Bytes, heap: _FractalHeap, heap_id: bytes) -> tuple[int, int]:
    """(address, length) of a heap object from its heap ID."""
    kind = (heap_id[0] >> 4) & 0x03
    if kind == 1:
        return _huge_object(reader, heap, heap_id)
    if kind != 0:
        raise _Stop  # a tiny object, held in the ID: too small for an attribute message
    offset = int.from_bytes(heap_id[1 : 1 + heap.id_offset_size], "little")
    start = 1 + heap.id_offset_size
    length = int.from_bytes(heap_id[start : start + heap.id_length_size], "little")
    if heap.root_rows == 0:
        block, block_offset, block_size = heap.root, 0, heap.start_block
    else:
        block, block_offset, block_size = _direct_block(reader, heap, offset)
    if reader.raw(block, 4) != b"FHDB" or offset - block_offset + length > block_size:
        raise _Stop
    return block + offset - block_offset, length


def _huge_object(reader: _Bytes, heap: _FractalHeap, heap_id: bytes) -> tuple[int, int]:
    """(address, length) of an object too large for the heap's blocks, from the heap's B-tree of them
    (a leaf of records of type 1: address, length, ID)."""
    O, L = reader.O, reader.L
    if heap.huge_tree is None or O + L <= heap.id_size - 1:
        raise _Stop  # an ID that holds the address itself: heap IDs of attributes are too short for that
    id_size = min(heap.id_size - 1, 8)
    key = int.from_bytes(heap_id[1 : 1 + id_size], "little")
    for record in _leaf_records(reader, heap.huge_tree, 1):
        if int.from_bytes(record[O + L : O + L + id_size], "little") == key:
            return reader.base + int.from_bytes(record[:O], "little"), int.from_bytes(record[O : O + L], "little")
    raise _Stop


def _leaf_records(reader: _Bytes, tree: int, kind: int) -> list[bytes]:
    """The records of a version 2 B-tree of record type `kind` whose root is a leaf."""
    if reader.raw(tree, 4) != b"BTHD" or reader.uint(tree + 5, 1) != kind:
        raise _Stop
    record_size, depth = reader.uint(tree + 10, 2), reader.uint(tree + 12, 2)
    root, count = reader.address(tree + 16), reader.uint(tree + 16 + reader.O, 2)
    if depth != 0 or not record_size:
        raise _Stop  # more records than one leaf holds: not in a trial log
    if reader.raw(root, 4) != b"BTLF":
        raise _Stop
    return [reader.raw(root + 6 + i * record_size, record_size) for i in range(count)]


def _direct_block(reader: _Bytes, heap: _FractalHeap, offset: int) -> tuple[int, int, int]:
    """(address, heap offset, size) of the root indirect block's direct block holding `offset`."""
    at = heap.root
    if reader.raw(at, 4) != b"FHIB":
        raise _Stop
    entries = at + 5 + reader.O + heap.id_offset_size  # signature, version, heap address, block offset
    row_start = 0
    for row in range(heap.root_rows):
        size = heap.start_block << max(0, row - 1)
        if size > heap.max_direct:
            raise _Stop  # held by a nested indirect block: not in a trial log
        if offset < row_start + heap.table_width * size:
            column = (offset - row_start) // size
            block = reader.address(entries + (row * heap.table_width + column) * reader.O)
            return block, row_start + column * size, size
        row_start += heap.table_width * size
    raise _Stop


def _dense_values(reader: _Bytes, info: int, names: set[str]) -> Iterator[VlenValue]:
    if reader.uint(info, 1) != 0:
        raise _Stop
    at = info + 2 + (2 if reader.uint(info + 1, 1) & 0x01 else 0)
    heap = _fractal_heap(reader, reader.address(at))
    for record in _leaf_records(reader, reader.address(at + reader.O), 8):
        # Heap ID (8 bytes), message flags (1), creation order (4), name hash (4).
        if len(record) < 17 or record[8] & 0x02:
            continue  # a shared message: the heap holds a reference, not the attribute
        try:
            body, length = _heap_object(reader, heap, record[:8])
            name = _attribute_message(reader, body, length)[0]
        except _Stop:
            continue  # this attribute cannot be found; the others may
        if lookup3_hash(name.encode("utf-8")) == int.from_bytes(record[13:17], "little"):
            yield from _attribute_message_values(reader, body, length, names)
