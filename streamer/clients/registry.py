"""The Schema Registry, through confluent-kafka's ``SchemaRegistryClient``.

:class:`RegistrySource` is the :class:`~streamer.core.formats.SchemaSource` of
the registry formats: it tells an id the registry does not have (404,
``SchemaNotFoundError``: the record is dead-lettered as ``unknown_schema``)
from a registry that cannot be asked (connection failure, timeout, 5xx, 401/403:
``RegistryUnavailableError``: the record waits, it is never dead-lettered for it).
Credentials go to the client only; they are never logged.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from streamer.core.formats import (
    AvroOutputEncoder,
    RecordReader,
    RegistryUnavailableError,
    SchemaNotFoundError,
    avro_output_schema,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from streamer.settings import FormatSettings

log = logging.getLogger(__name__)

# The registry's error code for "schema not found" (HTTP 404).
_SCHEMA_NOT_FOUND = 40403


def client_config(fmt: FormatSettings) -> dict[str, Any]:
    """The ``SchemaRegistryClient`` configuration of ``[format]``."""
    conf: dict[str, Any] = {
        "url": fmt.registry_url,
        "cache.capacity": fmt.registry_cache_size,
        "timeout": fmt.registry_timeout_s,
        # One attempt per call: RecordReader waits and asks again itself, so that a
        # long outage is visible (readiness, logs) instead of hidden in client retries.
        "max.retries": 0,
    }
    if fmt.registry_basic_auth:
        conf["basic.auth.user.info"] = fmt.registry_basic_auth
    if fmt.registry_bearer_token:
        conf["bearer.auth.credentials.source"] = "STATIC_TOKEN"
        conf["bearer.auth.token"] = fmt.registry_bearer_token
        # The client requires a logical cluster header; a self-managed registry ignores it.
        conf["bearer.auth.logical.cluster"] = "default"
    if fmt.registry_ca_location:
        conf["ssl.ca.location"] = fmt.registry_ca_location
    return conf


class RegistrySource:
    """Schemas by id from a Confluent-compatible Schema Registry."""

    def __init__(self, fmt: FormatSettings, client: Any = None) -> None:
        from confluent_kafka.schema_registry import SchemaRegistryClient  # noqa: PLC0415

        self._client = client or SchemaRegistryClient.new_client(client_config(fmt))
        self.url = fmt.registry_url

    def schema(self, schema_id: int, schema_type: str) -> tuple[str, str]:
        """``(schema_type, schema_str)`` of ``schema_id``; Protobuf as a serialized descriptor."""
        fmt = "serialized" if schema_type == "PROTOBUF" else None
        schema = self._call(lambda: self._client.get_schema(schema_id, fmt=fmt), schema_id)
        return schema.schema_type or "AVRO", schema.schema_str or ""

    def register(self, subject: str, schema_str: str) -> int:
        """The id of ``schema_str`` under ``subject``, registering it if it is new."""
        from confluent_kafka.schema_registry import Schema  # noqa: PLC0415

        schema = Schema(schema_str, "AVRO")
        return int(self._call(lambda: self._client.register_schema(subject, schema), None))

    def check(self) -> None:
        """Raise RegistryUnavailableError unless the registry answers (readiness, start)."""
        self._call(self._client.get_subjects, None)

    def _call(self, call: Callable[[], Any], schema_id: int | None) -> Any:
        from confluent_kafka.schema_registry.error import SchemaRegistryError  # noqa: PLC0415

        try:
            return call()
        except SchemaRegistryError as exc:
            if schema_id is not None and (
                exc.error_code == _SCHEMA_NOT_FOUND or exc.http_status_code == 404
            ):
                raise SchemaNotFoundError(str(schema_id)) from None
            status, text = exc.http_status_code, exc.error_message
            msg = f"schema registry {self.url} answered HTTP {status}: {text}"
            raise RegistryUnavailableError(msg) from None
        except Exception as exc:
            msg = f"schema registry {self.url} is unreachable: {type(exc).__name__}: {exc}"
            raise RegistryUnavailableError(msg) from None


def make_reader(
    fmt: FormatSettings, on_wait: Callable[[Exception], None] | None = None
) -> RecordReader | None:
    """The reader of ``format.input``, or None for JSON (the fast path in core/features.py)."""
    if fmt.input == "json":
        return None
    return RecordReader(
        fmt.input,
        RegistrySource(fmt),
        cache_size=fmt.registry_cache_size,
        retry_s=fmt.registry_retry_s,
        on_wait=on_wait,
    )


def registry_wait_logger(every_s: float = 10.0) -> Callable[[Exception], None]:
    """An ``on_wait`` that logs the outage at WARNING, at most once every ``every_s``."""
    last = [float("-inf")]

    def on_wait(error: Exception) -> None:
        now = time.monotonic()
        if now - last[0] >= every_s:
            last[0] = now
            log.warning("%s; records whose schema is not cached wait (none is lost)", error)

    return on_wait


class AvroOutputWriter:
    """Encodes predictions as Avro, with a schema registered once per set of output names.

    While the registry is unreachable, registering waits and asks again every
    ``format.registry_retry_s`` (the batch waits; nothing is lost).
    """

    def __init__(
        self, fmt: FormatSettings, output_topic: str, source: RegistrySource | None = None
    ) -> None:
        self._source = source or RegistrySource(fmt)
        self.subject = fmt.output_subject or f"{output_topic}-value"
        self._retry_s = fmt.registry_retry_s
        self._on_wait = registry_wait_logger()
        # By output names and whether the outputs carry reason codes: one schema each.
        self._encoders: dict[tuple[tuple[str, ...], bool], AvroOutputEncoder] = {}

    def encode(self, **fields: Any) -> list[bytes]:
        """What ``encode_predictions`` returns, as Avro records."""
        names: tuple[str, ...] = fields["output_names"]
        with_reasons = bool(fields.get("reasons"))
        encoder = self._encoders.get((names, with_reasons))
        if encoder is None:
            schema_str = avro_output_schema(names, with_reasons=with_reasons)
            while True:
                try:
                    schema_id = self._source.register(self.subject, schema_str)
                    break
                except RegistryUnavailableError as exc:
                    self._on_wait(exc)
                    time.sleep(self._retry_s)
            encoder = AvroOutputEncoder(schema_id, schema_str)
            self._encoders[names, with_reasons] = encoder
        return encoder.encode(**fields)
