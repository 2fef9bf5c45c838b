"""Pure rules: Go-compatible JSON decoding, toxic validation, and the toxics' arithmetic."""

from __future__ import annotations

import random

import pytest

from chaos.toxiproxy import api_model as m
from chaos.toxiproxy.proxy import split_host_port
from chaos.toxiproxy.toxics import Toxic, latency_target, slice_sizes


def test_decode_reads_first_value_only_and_reports_eof() -> None:
    assert m.decode_body(b' {"a": 1} trailing garbage') == {"a": 1}
    for empty in (b"", b"  \n"):
        with pytest.raises(m.ApiError, match="bad request body: EOF"):
            m.decode_body(empty)
    with pytest.raises(m.ApiError, match="unexpected EOF"):
        m.decode_body(b'{"name": ')
    with pytest.raises(m.ApiError, match="bad request body"):
        m.decode_body(b'{"a": NaN}')


def test_fold_keys_case_insensitive_null_and_exact_preference() -> None:
    fields = m.fold_keys({"NAME": "a", "Upstream": None, "x": 1}, "P", ("name", "upstream"))
    assert fields == {"name": "a"}
    assert m.fold_keys({"name": "exact", "Name": "folded"}, "P", ("name",)) == {"name": "exact"}
    assert m.fold_keys({"Name": "folded", "NAME": "later"}, "P", ("name",)) == {"name": "later"}


def test_proxy_create_types() -> None:
    spec = m.parse_proxy_create({"name": "a", "upstream": "u:1", "enabled": False, "toxics": [1]})
    assert (spec.name, spec.upstream, spec.listen, spec.enabled, spec.toxics) == ("a", "u:1", None, False, [])
    with pytest.raises(m.ApiError, match="cannot unmarshal number 1 into Go struct field Proxy.name"):
        m.parse_proxy_create({"name": 1})
    with pytest.raises(m.ApiError, match="cannot unmarshal string into Go value"):
        m.parse_proxy_create("x")


def test_toxic_create_validation_order() -> None:
    spec = m.parse_toxic_create({"type": "latency", "stream": "UpStream", "attributes": {"LATENCY": 5}})
    toxic = m.build_toxic(spec, set())
    assert (toxic.name, toxic.stream, toxic.direction) == ("latency_UpStream", "UpStream", "upstream")
    assert toxic.attributes == {"latency": 5, "jitter": 0}
    # stream is checked before type, type before duplicates, duplicates before attributes
    bad_all = m.parse_toxic_create({"type": "x", "stream": "s", "attributes": {"latency": 1.5}})
    with pytest.raises(m.ApiError, match="stream was invalid"):
        m.build_toxic(bad_all, set())
    dup_bad_attr = m.parse_toxic_create({"type": "latency", "name": "n", "attributes": {"latency": 1.5}})
    with pytest.raises(m.ApiError, match="toxic already exists"):
        m.build_toxic(dup_bad_attr, {"n"})
    with pytest.raises(m.ApiError, match="cannot unmarshal number 1.5"):
        m.build_toxic(dup_bad_attr, set())


def test_toxic_update_merges_and_keeps_toxicity() -> None:
    toxic = Toxic("l", "latency", "downstream", 0.5, {"latency": 100, "jitter": 10})
    upd = m.parse_toxic_update({"attributes": {"latency": 1000}, "name": "ignored"}, toxic)
    assert upd.attributes == {"latency": 1000, "jitter": 10} and upd.toxicity == 0.5
    assert m.parse_toxic_update({"toxicity": 0}, toxic).toxicity == 0.0
    with pytest.raises(m.ApiError):
        m.parse_toxic_update({"toxicity": 1e40}, toxic)


def test_toxicity_printed_like_go_float32() -> None:
    assert Toxic("t", "noop", "downstream", 1.0).to_json()["toxicity"] == 1
    assert Toxic("t", "noop", "downstream", 0.2).to_json()["toxicity"] == 0.2
    assert Toxic("t", "noop", "downstream", 0.1000000001).to_json()["toxicity"] == 0.1


def test_populate_parsing_with_declared_toxics() -> None:
    specs = m.parse_populate([{"name": "a", "upstream": "u:1", "toxics": [{"type": "noop"}]}])
    assert specs[0].toxics[0].type == "noop"
    with pytest.raises(m.ApiError, match="at proxy 1"):
        m.parse_populate([{"name": "a", "upstream": "u:1", "toxics": [{"toxicity": "x"}]}])
    with pytest.raises(m.ApiError, match="cannot unmarshal object"):
        m.parse_populate({"name": "a"})
    assert m.parse_populate(None) == []  # JSON null, as Go: nothing to do


def test_null_body_means_all_defaults() -> None:
    assert m.parse_proxy_create(None).name == ""
    spec = m.parse_toxic_create(None)
    assert (spec.type, spec.stream, spec.toxicity) == ("", "downstream", 1.0)
    assert m.toxic_name(spec) == "_downstream"


def test_slice_sizes_match_go() -> None:
    rng = random.Random(3)
    assert slice_sizes(24, 1, 0, rng) == [1] * 24
    for _ in range(20):
        sizes = slice_sizes(480_000, 1024, 512, rng)
        assert sum(sizes) == 480_000
        assert 240 <= len(sizes) <= 720
        assert max(sizes) <= 1024 + 512


def test_latency_target_is_from_receive_time() -> None:
    rng = random.Random(1)
    assert latency_target(10.0, 100, 0, rng) == pytest.approx(10.1)
    assert latency_target(10.0, -5, 0, rng) == 10.0  # negative latency: no delay
    for _ in range(100):
        assert 10.09 <= latency_target(10.0, 100, 10, rng) < 10.11


def test_split_host_port() -> None:
    assert split_host_port("localhost:80") == ("localhost", "80")
    assert split_host_port("[::1]:80") == ("::1", "80")
    assert split_host_port(":80") == ("", "80")
    for bad in ("local373", "[::1]", "a:b:c"):
        with pytest.raises(ValueError):
            split_host_port(bad)
