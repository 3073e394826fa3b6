"""How large one key's state may grow: it must fit one changelog record.

A key's whole window state is one store value, so one record of the changelog
topic, and a record larger than the producer's ``kafka.max_request_bytes``
(or the broker's ``message.max.bytes``) would fail its batch on every retry: a
poison batch that stops the partition. Two bounds keep every key's record
within ``kafka.max_request_bytes``, checked at start:

- **Text.** A key, and a value a ``distinct_count`` reads as text, longer than
  ``state.max_text_bytes`` (UTF-8) is refused: the record is dead-lettered as
  ``state_too_large`` (core/state/layout.py).
- **Entries.** A record that would give its key more than
  ``state.max_entries_per_key`` entries (those within the key's horizon, after
  the older ones are dropped) is dead-lettered as ``state_too_large``, and the
  key's state is unchanged (core/state/windows.py). 0 (the default) means the
  most entries whose worst case fits: :func:`entries_that_fit`.

Both are rules of the values, like the windows: the offline command reads them
from the same settings, so it refuses the same records and computes the same
values. Evicting the oldest entries instead would keep the key scored but make
its values silently wrong (a count that stops counting); a dead letter says so.

The worst case of one entry, in MessagePack as the codec writes it
(core/state/codec.py): its time, an integer, at most 9 bytes; a number at 9
bytes (a float64 always); a text at most 5 bytes of header and
``max_text_bytes``. Around them: the store key (2 bytes and the key's text),
the key state's arrays (at most 5 bytes of header each) and the Kafka record
batch that carries the record (:data:`RECORD_OVERHEAD_BYTES`).
"""

from __future__ import annotations

from collections.abc import Sequence

INT_BYTES = 9
"""The largest MessagePack integer (an int64 or uint64 and its type byte)."""
FLOAT_BYTES = 9
"""A float64 and its type byte (msgspec never writes a float32)."""
HEADER_BYTES = 5
"""The largest MessagePack header of an array or a text (type byte and 4-byte length)."""
STORE_KEY_PREFIX_BYTES = 2
"""The store key's kind and group bytes before the key's text (codec.key_state_key)."""
RECORD_OVERHEAD_BYTES = 128
"""A Kafka v2 record batch of one record, around its key and value: a 61-byte batch header
and at most 5 varints of the record (about 25 bytes), with room to spare."""


def entry_bytes(numeric: Sequence[bool], max_text_bytes: int) -> int:
    """The worst case of one entry of a group whose fields are ``numeric`` (else text)."""
    return INT_BYTES + sum(
        FLOAT_BYTES if is_number else HEADER_BYTES + max_text_bytes for is_number in numeric
    )


def fixed_bytes(fields: int, max_text_bytes: int) -> int:
    """The worst case of a key's changelog record without its entries."""
    store_key = STORE_KEY_PREFIX_BYTES + max_text_bytes
    # The key state: an array of 3, the newest time, the times' array, the columns'
    # array and one array per field.
    key_state = 1 + INT_BYTES + HEADER_BYTES + HEADER_BYTES + fields * HEADER_BYTES
    return RECORD_OVERHEAD_BYTES + store_key + key_state


def record_bytes(numeric: Sequence[bool], entries: int, max_text_bytes: int) -> int:
    """The worst case of the changelog record of a key with ``entries`` entries."""
    return fixed_bytes(len(numeric), max_text_bytes) + entries * entry_bytes(
        numeric, max_text_bytes
    )


def entries_that_fit(numeric: Sequence[bool], max_record_bytes: int, max_text_bytes: int) -> int:
    """The most entries whose worst-case changelog record fits ``max_record_bytes`` (may be 0)."""
    room = max_record_bytes - fixed_bytes(len(numeric), max_text_bytes)
    return max(0, room // entry_bytes(numeric, max_text_bytes))
