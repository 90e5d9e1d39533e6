from pathlib import Path

import msgspec
import pytest

from brixmesh.common import messages as m
from brixmesh.common import subjects as s

ROOT = Path(__file__).resolve().parents[2]


def test_format_sanitizes_tokens_so_names_never_split_a_subject() -> None:
    assert s.KV_EVENTS.format(model="meta/llama-3.1 8b", pod="pod.1") == "kv.events.meta_llama-3_1_8b.pod_1"
    assert s.token("a*b>c") == "a_b_c"


def test_format_requires_every_token() -> None:
    with pytest.raises(ValueError, match="needs"):
        s.KV_EVENTS.format(model="m")
    with pytest.raises(ValueError):
        s.token("")


def test_pattern_fills_given_tokens_and_wildcards_the_rest() -> None:
    assert s.KV_EVENTS.pattern() == "kv.events.*.*"
    assert s.KV_EVENTS.pattern(model="m") == "kv.events.m.*"
    assert s.PODS.pattern(kind="ready") == "pods.ready.*.*"


def test_parse_and_schema_lookup() -> None:
    assert s.KV_EVENTS.parse("kv.events.m.p") == {"model": "m", "pod": "p"}
    assert s.schema_for("mesh.heartbeat.router") is s.MESH_HEARTBEAT
    assert s.schema_for("kv.events.m") is None
    assert s.schema_for("$JS.API.INFO") is None
    with pytest.raises(ValueError):
        s.METRICS_PODS.parse("metrics.pods")


def test_subject_templates_are_unique() -> None:
    templates = [subject.template for subject in s.ALL]
    assert len(templates) == len(set(templates))


def test_hot_schemas_round_trip_as_compact_arrays() -> None:
    batch = m.KvEventBatch(
        pod="p", model="m", engine_seq=3, ts=1.5,
        events=[m.KvBlockStored([1, 2], None, [0] * 64, 32, None, "GPU"), m.KvBlockRemoved([1]), m.KvAllCleared()],
    )
    data = msgspec.msgpack.encode(batch)
    assert msgspec.msgpack.decode(data, type=m.KvEventBatch) == batch
    assert isinstance(msgspec.msgpack.decode(data), list)


def test_docs_subjects_md_is_generated_from_the_code() -> None:
    committed = (ROOT / "docs" / "subjects.md").read_text()
    assert committed.strip() == s.render_markdown().strip(), "regenerate: python -m brixmesh.common.subjects > docs/subjects.md"
