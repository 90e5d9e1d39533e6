"""Hypothesis drives the bus decoders with arbitrary bytes: for every message schema, decoding raises only
what ``Bus.subscribe`` and ``Bus.serve`` catch (the payload is then counted in ``decode_errors``, skipped)."""

from __future__ import annotations

import inspect

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from brixmesh.common import messages
from brixmesh.common.bus import decoder_for, encode
from brixmesh.common.messages import PAYLOAD_ERRORS

SCHEMAS = sorted(
    (
        schema
        for _name, schema in inspect.getmembers(messages, inspect.isclass)
        if issubclass(schema, msgspec.Struct) and schema.__module__ == messages.__name__
    ),
    key=lambda schema: schema.__name__,
)
_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 64) - 1) | st.floats() | st.text(max_size=16)
    | st.binary(max_size=16),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=40,
)  # fmt: skip
_payloads = st.binary(max_size=512) | _values.map(encode)


def test_every_message_schema_is_covered() -> None:
    assert len(SCHEMAS) > 10


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda schema: schema.__name__)
@settings(max_examples=80, deadline=None)
@given(payload=_payloads)
def test_arbitrary_bytes_raise_only_decode_errors(schema: type[msgspec.Struct], payload: bytes) -> None:
    try:
        decoder_for(schema).decode(payload)
    except PAYLOAD_ERRORS:  # what the bus catches (invalid UTF-8 in a string is a UnicodeDecodeError)
        pass
