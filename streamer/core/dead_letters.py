"""Dead-letter reasons: one per fault, used as the ``reason`` label, header and field.

Every module that dead-letters a record, counts one or reads one names its
reason from here, so that the metric's label set, the docs and the code cannot
drift apart.
"""

from __future__ import annotations

# The record's bytes (core/features.py).
NOT_UTF8 = "not_utf8"
INVALID_JSON = "invalid_json"
NOT_OBJECT = "not_object"
OVERSIZED = "oversized"
EMPTY_VALUE = "empty_value"
# Its features (core/features.py).
MISSING_FEATURE = "missing_feature"
NON_NUMERIC_FEATURE = "non_numeric_feature"
NON_FINITE = "non_finite"
# The model raised or returned a NaN for the row (actors/model.py).
MODEL_ERROR = "model_error"
# The client or the broker refused the record's prediction (e.g. too large).
PRODUCE_REJECTED = "produce_rejected"
# Schema-registry formats (core/formats.py): the id is not in the registry, the
# bytes do not match their schema, no magic byte where the format needs one.
UNKNOWN_SCHEMA = "unknown_schema"
UNDECODABLE = "undecodable"
WRONG_FORMAT = "wrong_format"

# Declared window features (core/state/): the record lacks the key, its event
# time is unreadable or out of range, it is later than state.allowed_lateness_s,
# it was applied before and what it was served is no longer kept, or it would
# make its key's state too large for one changelog record (core/state/limits.py).
MISSING_KEY = "missing_key"
BAD_TIMESTAMP = "bad_timestamp"
LATE = "late"
STATE_REPLAYED = "state_replayed"
STATE_TOO_LARGE = "state_too_large"

STATE_REASONS = (MISSING_KEY, BAD_TIMESTAMP, LATE, STATE_REPLAYED, STATE_TOO_LARGE)
"""The reasons only the state gives (stage ``state``)."""

# A label record (labels.topic) that joins nothing because of its own content
# (core/labels/join.py): not a JSON object, no id, a value or a time that is not
# one, or a partition coordinate that is not the labels partition it came from.
LABEL_MALFORMED = "malformed"
LABEL_MISSING_ID = "missing_id"
LABEL_WRONG_TYPE = "wrong_type"
LABEL_BAD_TIME = "bad_time"
LABEL_MISROUTED = "misrouted"

LABEL_DEAD_LETTER_REASONS = (
    LABEL_MALFORMED, LABEL_MISSING_ID, LABEL_WRONG_TYPE, LABEL_BAD_TIME, LABEL_MISROUTED,
)  # fmt: skip
"""The reasons only a label gives (stage ``labels``)."""

REASONS = (
    NOT_UTF8, INVALID_JSON, NOT_OBJECT, MISSING_FEATURE, NON_NUMERIC_FEATURE,
    NON_FINITE, OVERSIZED, EMPTY_VALUE, MODEL_ERROR, PRODUCE_REJECTED,
    UNKNOWN_SCHEMA, UNDECODABLE, WRONG_FORMAT, *STATE_REASONS, *LABEL_DEAD_LETTER_REASONS,
)  # fmt: skip
"""Every reason, in the order of the ``streamer_dead_letters_total`` series (labels' last)."""

FEATURE_REASONS = frozenset({MISSING_FEATURE, NON_NUMERIC_FEATURE, NON_FINITE})
"""The reasons that name one feature (``feature 'name' ...``): the drift window counts them."""
