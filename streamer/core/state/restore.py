"""The restore plan: on assignment, use the local store, rebuild it from the changelog, or not.

The changelog topic of a store holds the store's own keys and values
(:mod:`streamer.core.state.codec`), and every batch ends with the partition's
meta record, so the changelog's newest meta says how far the durable state
goes. The local store is used only when it is exactly as far: a local store
that is *behind* was left by an instance that lost the partition and got it
back; one that is *ahead* applied a batch whose changelog records were never
acknowledged (so the batch was not committed either, and its records come
again: rebuilt from the changelog, they are applied again and written to the
changelog this time).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum

import msgspec

from streamer.core.state.changelog import meta_record
from streamer.core.state.codec import CODEC_VERSION, META_KEY, Meta, decode_meta
from streamer.core.state.store import Change, Store


class Action(StrEnum):
    """What to do with a partition's state before its first record is scored."""

    USE_LOCAL = "use_local"
    REBUILD = "rebuild_from_changelog"
    START_EMPTY = "start_empty"


@dataclass(frozen=True)
class RestorePlan:
    """The action, whether the local store is discarded first, and why (for the log line)."""

    action: Action
    discard_local: bool
    reason: str


def local_meta(store: Store) -> Meta | str | None:
    """The local store's meta; None for an empty store; a text saying why it is unreadable."""
    raw = store.get(META_KEY)
    if raw is None:
        return None
    try:
        return decode_meta(raw)
    except msgspec.DecodeError as exc:
        return f"corrupt meta: {exc}"


def plan_restore(  # noqa: PLR0911 - one return per row of the table in docs/state.md
    local: Meta | str | None,
    changelog: Meta | None,
    *,
    fingerprint: str,
    topic: str,
    partition: int,
) -> RestorePlan:
    """Decide from the local store's meta and the changelog's newest meta record."""

    def ours(meta: Meta) -> str | None:
        if (meta.topic, meta.partition) != (topic, partition):
            return f"it belongs to {meta.topic}/{meta.partition}"
        if meta.version != CODEC_VERSION:
            return f"its codec is version {meta.version}, not {CODEC_VERSION}"
        if meta.fingerprint != fingerprint:
            return "the declared features changed since it was written"
        return None

    changelog_problem = ours(changelog) if changelog is not None else "the changelog is empty"
    rebuild = (
        RestorePlan(Action.REBUILD, True, "")
        if changelog_problem is None
        else RestorePlan(Action.START_EMPTY, True, changelog_problem)
    )
    if local is None:
        reason = "no local store" + (f"; {changelog_problem}" if changelog_problem else "")
        return RestorePlan(rebuild.action, False, reason)
    if isinstance(local, str):
        return RestorePlan(rebuild.action, True, f"the local store is unusable ({local})")
    local_problem = ours(local)
    if local_problem is not None:
        return RestorePlan(rebuild.action, True, f"the local store is foreign: {local_problem}")
    if changelog is None:
        # No batch of the partition was acknowledged (it needs its changelog records), so
        # none was committed: the local store is ahead, and the input comes again from the
        # start. (A changelog deleted by hand loses the state the same way.)
        return RestorePlan(
            Action.START_EMPTY,
            True,
            f"the changelog is empty: the local store at offset {local.last_offset} is ahead",
        )
    if changelog_problem is not None:
        return RestorePlan(Action.START_EMPTY, True, changelog_problem)
    if local.last_offset == changelog.last_offset:
        return RestorePlan(Action.USE_LOCAL, False, f"local store current at {local.last_offset}")
    side = "behind" if local.last_offset < changelog.last_offset else "ahead of"
    return RestorePlan(
        Action.REBUILD,
        True,
        f"local store at offset {local.last_offset} is {side} the changelog at "
        f"{changelog.last_offset}",
    )


def newest_meta(changelog: Sequence[Change]) -> Meta | None:
    """The newest readable meta record of a changelog (its last meta record)."""
    for key, value in reversed(changelog):
        if key == META_KEY and value is not None:
            return meta_record(key, value)
    return None


def restore(store: Store, changelog: Iterable[Change], chunk: int = 10_000) -> Iterator[int]:
    """Write the changelog's records into an empty store, ``chunk`` at a time; yields the count."""
    done = 0
    buffer: list[Change] = []
    for change in changelog:
        buffer.append(change)
        if len(buffer) >= chunk:
            store.write(buffer)
            done += len(buffer)
            buffer = []
            yield done
    if buffer:
        store.write(buffer)
        done += len(buffer)
    yield done
