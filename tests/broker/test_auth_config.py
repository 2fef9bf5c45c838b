"""Token file parsing, rights, and command-line validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from broker.auth import AuthFileError, load_tokens, parse_tokens, token_from
from broker.cli import main
from broker.config import parse_args


def test_rights_globs_binding_and_expiry(tmp_path: Path) -> None:
    f = tmp_path / "auth.json"
    f.write_text(
        json.dumps(
            {
                "tokens": {
                    "t1": {"client_id": "alice", "publish": ["orders/*"], "subscribe": ["*"]},
                    "t2": {"publish": [], "expires_at": 100},
                }
            }
        )
    )
    tokens = load_tokens(f)
    a, b = tokens["t1"], tokens["t2"]
    assert a.client_id == "alice" and a.may_publish("orders/eu/1") and not a.may_publish("Orders/x")
    assert a.may_subscribe("anything") and b.may_subscribe("x") and not b.may_publish("x")
    assert b.expired(100) and not b.expired(99) and not a.expired(1e12)


def test_toml_token_file(tmp_path: Path) -> None:
    f = tmp_path / "auth.toml"
    f.write_text('[tokens.abc]\nclient_id = "c1"\nsubscribe = ["news/*"]\n')
    r = load_tokens(f)["abc"]
    assert r.client_id == "c1" and r.may_subscribe("news/x") and not r.may_subscribe("other")


@pytest.mark.parametrize(
    "doc, needle",
    [
        ([], "'tokens'"),
        ({"tokens": []}, "'tokens'"),
        ({"tokens": {}, "extra": 1}, "unknown top-level"),
        ({"tokens": {"t": "x"}}, "must be an object"),
        ({"tokens": {"t": {"publish": "a*"}}}, "list of non-empty glob"),
        ({"tokens": {"t": {"client_id": "a b"}}}, "client_id"),
        ({"tokens": {"t": {"expires_at": "soon"}}}, "expires_at"),
        ({"tokens": {"t": {"admin": True}}}, "unknown keys"),
    ],
)
def test_bad_token_documents_are_clear_errors(doc: object, needle: str) -> None:
    with pytest.raises(AuthFileError, match=needle):
        parse_tokens(doc)


def test_unreadable_or_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(AuthFileError, match="cannot read"):
        load_tokens(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(AuthFileError, match="not valid JSON"):
        load_tokens(tmp_path / "bad.json")


def test_token_from_query_or_bearer() -> None:
    assert token_from({"token": ["q"]}, "Bearer h") == "q"
    assert token_from({}, "Bearer h") == "h" and token_from({}, "bearer  h2 ") == "h2"
    assert token_from({}, "Basic xyz") is None and token_from({"token": [""]}, None) is None


def test_cli_options_and_defaults() -> None:
    cfg = parse_args(["--port", "0", "--flaw", "no-hydrate", "--flaw", "store-first", "--retry-initial", "2"])
    assert cfg.port == 0 and cfg.flaws == {"no-hydrate", "store-first"} and cfg.retry_initial == 2.0
    assert cfg.retry_initial <= 5 and cfg.retry_max == 30 and cfg.max_frame == 1 << 20 and not cfg.compression


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--flaw", "nope"], "unknown flaw 'nope'"),
        (["--port", "70000"], "port out of range"),
        (["--store", "postgres"], "needs --dsn"),
        (["--retry-initial", "60"], "--retry-initial <= --retry-max"),
        (["--max-attempts", "0"], "must be > 0"),
        (["--ttl", "abc"], "not a float"),
    ],
)
def test_bad_options_exit_2_with_a_clear_message(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert needle in capsys.readouterr().err


def test_bad_auth_file_is_a_startup_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.json").write_text('{"tokens": 3}')
    assert main(["--port", "0", "--auth", str(tmp_path / "a.json")]) == 2
    assert "expected an object with a 'tokens' table" in capsys.readouterr().err
