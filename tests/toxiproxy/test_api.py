"""The HTTP API over real sockets: status codes, error bodies, defaults, populate, reset, listen reporting."""

from __future__ import annotations

import json
import socket

import pytest
import requests

from tests.toxiproxy.conftest import Api, EchoServer, is_listening, port_of

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return s.getsockname()[1]


def _err(resp: requests.Response) -> tuple[int, str]:
    assert resp.text.endswith("\n")
    body = json.loads(resp.text)
    assert body["status"] == resp.status_code
    return resp.status_code, body["error"]


# --- transport-level behaviour ---------------------------------------------------------------------------


def test_version_request_id_and_router_errors(api: Api) -> None:
    resp = api("GET", "/version")
    assert resp.status_code == 200
    assert resp.text == '{"version": "2.12.0"}\n'
    assert len(resp.headers["X-Toxiproxy-Request-Id"]) == 20
    missing = api("GET", "/nope")
    assert (missing.status_code, missing.text) == (404, "404 page not found\n")
    assert "X-Toxiproxy-Request-Id" not in missing.headers
    assert api("GET", "/proxies/").status_code == 404  # trailing slash does not match
    wrong = api("PUT", "/proxies")
    assert (wrong.status_code, wrong.text) == (405, "")
    assert api("GET", "/metrics").status_code == 404  # only with a metrics flag


def test_browser_user_agent_is_blocked(api: Api) -> None:
    blocked = api("GET", "/proxies", headers={"User-Agent": "Mozilla/5.0 (X11)"})
    assert (blocked.status_code, blocked.text) == (403, "User agent not allowed\n")
    assert api("GET", "/proxies", headers={"User-Agent": "Wget/2.1"}).status_code == 200


def test_keep_alive_and_http10(server: object, api: Api) -> None:
    url = api.url.removeprefix("http://")
    host, port = url.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        for _ in range(3):  # three requests on one connection
            s.sendall(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
            head = b""
            while b'"}\n' not in head:
                head += s.recv(4096)
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        s.sendall(b"POST /proxies HTTP/1.0\r\nContent-Length: 2\r\n\r\n{}")
        raw = b""
        while chunk := s.recv(4096):  # HTTP/1.0: the server closes after answering
            raw += chunk
        assert raw.startswith(b"HTTP/1.1 400 ")
        assert b'{"error":"missing required field: name","status":400}\n' in raw


def test_malformed_http_gets_400(server: object, api: Api) -> None:
    host, port = api.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"this is not http\r\n\r\n")
        raw = s.recv(4096)
        assert raw.startswith(b"HTTP/1.1 400 ")


# --- proxies ---------------------------------------------------------------------------------------------


def test_empty_list_and_create_defaults(api: Api, echo: EchoServer) -> None:
    assert api("GET", "/proxies").json() == {}
    resp = api("POST", "/proxies", {"name": "a", "upstream": echo.addr, "listen": "localhost:0"})
    assert resp.status_code == 201
    body = resp.json()
    assert body["listen"].startswith("127.0.0.1:") and port_of(body["listen"]) > 0
    assert body["enabled"] is True and body["toxics"] == [] and body["upstream"] == echo.addr
    assert api("GET", "/proxies").json() == {"a": body}
    assert api("GET", "/proxies/a").json() == body
    assert is_listening(port_of(body["listen"]))


def test_create_errors(api: Api, echo: EchoServer) -> None:
    assert _err(api("POST", "/proxies", {"upstream": echo.addr})) == (400, "missing required field: name")
    assert _err(api("POST", "/proxies", {"name": "", "upstream": ""})) == (
        400,
        "missing required field: name",
    )
    assert _err(api("POST", "/proxies", {"name": "x"})) == (400, "missing required field: upstream")
    assert _err(api("POST", "/proxies", data=b"")) == (400, "bad request body: EOF")
    status, msg = _err(api("POST", "/proxies", data=b"{nope"))
    assert status == 400 and msg.startswith("bad request body: ")
    status, msg = _err(api("POST", "/proxies", {"name": "x", "upstream": echo.addr, "enabled": "yes"}))
    assert status == 400 and msg.startswith("bad request body: json: cannot unmarshal string")
    status, msg = _err(api("POST", "/proxies", [1, 2]))
    assert status == 400 and "cannot unmarshal array" in msg
    status, msg = _err(api("POST", "/proxies", {"name": "x", "upstream": echo.addr, "listen": "local373"}))
    assert (status, msg) == (500, "listen tcp: address local373: missing port in address")
    assert api("GET", "/proxies").json() == {}  # nothing created on error


def test_duplicate_name_and_port_in_use(api: Api, echo: EchoServer) -> None:
    port = _free_port()
    first = api.create("a", echo.addr, f"localhost:{port}")
    assert first["listen"] == f"127.0.0.1:{port}"
    assert _err(api("POST", "/proxies", {"name": "a", "upstream": echo.addr})) == (
        409,
        "proxy already exists",
    )
    busy = api("POST", "/proxies", {"name": "b", "upstream": echo.addr, "listen": f"localhost:{port}"})
    assert _err(busy) == (500, f"listen tcp 127.0.0.1:{port}: bind: address already in use")
    assert api("DELETE", "/proxies/a").status_code == 204
    assert api("POST", "/proxies", {"name": "b", "upstream": echo.addr, "listen": f"localhost:{port}"}).ok
    assert api.create("a", echo.addr)["name"] == "a"  # recreate after delete works


def test_case_insensitive_keys_nulls_and_unknown_keys(api: Api, echo: EchoServer) -> None:
    body = {"NAME": "a", "Upstream": echo.addr, "listen": None, "enabled": None, "junk": [1], "toxics": None}
    resp = api("POST", "/proxies", body)
    assert resp.status_code == 201, resp.text
    got = resp.json()
    assert got["name"] == "a" and got["enabled"] is True
    assert got["listen"].startswith("[::]:") or got["listen"].startswith("0.0.0.0:")  # wildcard


def test_created_disabled_reports_listen_verbatim(api: Api, echo: EchoServer) -> None:
    port = _free_port()
    body = api.create("a", echo.addr, f"localhost:{port}", enabled=False)
    assert body["listen"] == f"localhost:{port}" and body["enabled"] is False
    assert not is_listening(port)
    upd = api("POST", "/proxies/a", {"enabled": True}).json()
    assert upd["listen"] == f"127.0.0.1:{port}" and upd["enabled"] is True
    assert is_listening(port)
    assert api("PATCH", "/proxies/a", {"enabled": False}).json()["enabled"] is False
    assert not is_listening(port)


def test_reenable_binds_the_same_port(api: Api, echo: EchoServer) -> None:
    body = api.create("a", echo.addr)
    port = port_of(body["listen"])
    api("POST", "/proxies/a", {"enabled": False})
    assert not is_listening(port)
    again = api("POST", "/proxies/a", {"enabled": True}).json()
    assert again["listen"] == body["listen"] and is_listening(port)


def test_update_moves_port_and_errors(api: Api, echo: EchoServer) -> None:
    body = api.create("a", echo.addr)
    old = port_of(body["listen"])
    moved = api("PATCH", "/proxies/a", {"listen": "localhost:0"}).json()
    assert port_of(moved["listen"]) != old and is_listening(port_of(moved["listen"]))
    assert not is_listening(old)
    assert _err(api("POST", "/proxies/missing", {"enabled": True})) == (404, "proxy not found")
    assert _err(api("POST", "/proxies/a", data=b"")) == (400, "bad request body: EOF")
    same = api("POST", "/proxies/a", {"name": "ignored", "upstream": echo.addr}).json()
    assert same["name"] == "a" and same["listen"] == moved["listen"]


def test_delete(api: Api, echo: EchoServer) -> None:
    port = port_of(api.create("a", echo.addr)["listen"])
    resp = api("DELETE", "/proxies/a")
    assert (resp.status_code, resp.text) == (204, "")
    assert not is_listening(port)
    assert api("GET", "/proxies").json() == {}
    assert _err(api("DELETE", "/proxies/a")) == (404, "proxy not found")
    assert _err(api("GET", "/proxies/a")) == (404, "proxy not found")


# --- populate and reset ------------------------------------------------------------------------------------


def test_populate_create_keep_replace(api: Api, echo: EchoServer) -> None:
    p1, p2 = _free_port(), _free_port()
    items = [
        {"name": "one", "listen": f"localhost:{p1}", "upstream": echo.addr},
        {"name": "two", "listen": f"localhost:{p2}", "upstream": echo.addr, "enabled": False},
    ]
    resp = api("POST", "/populate", items)
    assert resp.status_code == 201
    got = resp.json()["proxies"]
    assert [p["name"] for p in got] == ["one", "two"]
    assert got[0]["listen"] == f"127.0.0.1:{p1}" and is_listening(p1) and not is_listening(p2)
    api.toxic("one", "latency", latency=10)
    # identical (localhost vs stored 127.0.0.1) -> kept with its toxics; changed upstream -> replaced
    items[1]["upstream"] = "127.0.0.1:1"
    again = api("POST", "/populate", items).json()["proxies"]
    assert len(again[0]["toxics"]) == 1
    assert again[1]["upstream"] == "127.0.0.1:1"
    assert api("POST", "/populate", []).json() == {"proxies": None}


def test_populate_validation_and_partial_failure(api: Api, echo: EchoServer) -> None:
    bad = [{"name": "one", "upstream": echo.addr}, {"upstream": echo.addr}]
    resp = api("POST", "/populate", bad)
    assert resp.status_code == 400 and resp.headers["Content-Type"] == "application/json"
    assert resp.json() == {"error": "missing required field: name at proxy 2", "status": 400, "proxies": None}
    assert api("GET", "/proxies").json() == {}
    items = [
        {"name": "one", "listen": "127.0.0.1:0", "upstream": echo.addr},
        {"name": "two", "listen": "local373", "upstream": echo.addr},
        {"name": "three", "listen": "127.0.0.1:0", "upstream": echo.addr},
    ]
    resp = api("POST", "/populate", items)
    assert resp.status_code == 500
    body = resp.json()
    assert [p["name"] for p in body["proxies"]] == ["one"]
    assert set(api("GET", "/proxies").json()) == {"one"}
    assert _err(api("POST", "/populate", data=b"")) == (400, "bad request body: EOF")
    assert api("POST", "/populate", {"name": "x"}).status_code == 400


def test_reset_enables_and_clears_toxics(api: Api, echo: EchoServer) -> None:
    body = api.create("a", echo.addr)
    api.toxic("a", "latency", latency=100)
    api.toxic("a", "timeout", "upstream", timeout=0)
    api("POST", "/proxies/a", {"enabled": False})
    resp = api("POST", "/reset")
    assert (resp.status_code, resp.text) == (204, "")
    got = api("GET", "/proxies/a").json()
    assert got["enabled"] is True and got["toxics"] == [] and got["listen"] == body["listen"]
    assert is_listening(port_of(body["listen"]))


# --- toxics ------------------------------------------------------------------------------------------------


def test_toxic_crud_defaults_and_messages(api: Api, echo: EchoServer) -> None:
    api.create("a", echo.addr)
    t = api("POST", "/proxies/a/toxics", {"type": "latency", "attributes": {"latency": 100, "jitter": 10}})
    assert t.status_code == 200
    assert t.json() == {
        "attributes": {"latency": 100, "jitter": 10},
        "name": "latency_downstream",
        "type": "latency",
        "stream": "downstream",
        "toxicity": 1,
    }
    up = api.toxic("a", "latency", "upstream")
    assert up["name"] == "latency_upstream" and up["attributes"] == {"latency": 0, "jitter": 0}
    noop = api("POST", "/proxies/a/toxics", {"type": "noop", "name": "n", "toxicity": 0.2}).json()
    assert noop["stream"] == "downstream" and noop["toxicity"] == 0.2 and noop["attributes"] == {}
    mixed = api(
        "POST", "/proxies/a/toxics", {"type": "noop", "stream": "UpStream", "attributes": None}
    ).json()
    assert mixed["name"] == "noop_UpStream" and mixed["stream"] == "UpStream"
    names = [x["name"] for x in api("GET", "/proxies/a/toxics").json()]
    assert names == ["latency_upstream", "noop_UpStream", "latency_downstream", "n"]  # upstream first
    assert api("GET", "/proxies/a/toxics/n").json()["toxicity"] == 0.2

    def post(body: object) -> tuple[int, str]:
        return _err(api("POST", "/proxies/a/toxics", body))

    assert post({"type": "latency", "name": "n"}) == (409, "toxic already exists")
    assert post({"type": "slow_close", "stream": "upstream", "name": "n"}) == (409, "toxic already exists")
    assert post({"type": "latency", "stream": "walrustream"}) == (
        400,
        "stream was invalid, can be either upstream or downstream",
    )
    assert post({"type": "latency", "stream": ""})[0] == 400
    assert post({"type": "nope"}) == (400, "invalid toxic type")
    assert post({"type": "latency", "name": "f", "attributes": {"latency": 1.5}})[0] == 400
    assert post({"type": "latency", "name": "f", "attributes": "x"})[0] == 400
    assert post({"type": "latency", "name": "f", "toxicity": "1"})[0] == 400
    assert _err(api("POST", "/proxies/a/toxics", data=b"")) == (400, "bad request body: EOF")
    assert _err(api("POST", "/proxies/zz/toxics", {"type": "noop"})) == (404, "proxy not found")
    assert _err(api("GET", "/proxies/a/toxics/zz")) == (404, "toxic not found")
    assert _err(api("GET", "/proxies/zz/toxics")) == (404, "proxy not found")
    assert api("DELETE", "/proxies/a/toxics/n").status_code == 204
    assert _err(api("DELETE", "/proxies/a/toxics/n")) == (404, "toxic not found")


def test_toxic_update_merges_attributes(api: Api, echo: EchoServer) -> None:
    api.create("a", echo.addr)
    api.toxic("a", "latency", latency=100, jitter=10)
    upd = api(
        "POST", "/proxies/a/toxics/latency_downstream", {"toxicity": 0.5, "attributes": {"latency": 1000}}
    )
    assert upd.status_code == 200
    assert upd.json()["attributes"] == {"latency": 1000, "jitter": 10} and upd.json()["toxicity"] == 0.5
    again = api("PATCH", "/proxies/a/toxics/latency_downstream", {"attributes": {"jitter": 0}, "type": "x"})
    assert again.json()["toxicity"] == 0.5 and again.json()["type"] == "latency"
    assert _err(api("PATCH", "/proxies/a/toxics/latency_downstream", data=b"")) == (
        400,
        "bad request body: EOF",
    )
    assert _err(api("PATCH", "/proxies/a/toxics/zz", {})) == (404, "toxic not found")


@pytest.mark.parametrize(
    ("type_", "attrs"),
    [
        ("bandwidth", {"rate": -1}),
        ("slicer", {"average_size": 0, "size_variation": 0}),
        ("slicer", {"average_size": 10, "size_variation": 20}),
        ("slicer", {"average_size": 10, "size_variation": -1}),
        ("latency", {"latency": 2**64}),
        ("latency", {"latency": True}),
    ],
)
def test_inputs_that_crash_go_get_400(
    api: Api, echo: EchoServer, type_: str, attrs: dict[str, object]
) -> None:
    api.create("a", echo.addr)
    status, msg = _err(api("POST", "/proxies/a/toxics", {"type": type_, "attributes": attrs}))
    assert status == 400 and msg
    if type_ == "bandwidth":  # an update may not sneak it in either
        api.toxic("a", "bandwidth", rate=10)
        upd = api("POST", "/proxies/a/toxics/bandwidth_downstream", {"attributes": {"rate": -5}})
        assert _err(upd)[0] == 400
        assert api("GET", "/proxies/a/toxics/bandwidth_downstream").json()["attributes"]["rate"] == 10


def test_populate_with_declared_toxics(api: Api, echo: EchoServer) -> None:
    declared = [{"type": "latency", "attributes": {"latency": 50}}, {"type": "noop", "name": "n"}]
    items = [{"name": "a", "upstream": echo.addr, "listen": "127.0.0.1:0", "toxics": declared}]
    got = api("POST", "/populate", items).json()["proxies"][0]
    assert [t["name"] for t in got["toxics"]] == ["latency_downstream", "n"]
    bad = [{"name": "b", "upstream": echo.addr, "toxics": [{"type": "nope"}]}]
    resp = api("POST", "/populate", bad)
    assert resp.status_code == 400 and resp.json()["error"] == "invalid toxic type at proxy 1"
    assert "b" not in api("GET", "/proxies").json()


def test_enable_after_failed_start_once_port_is_free(api: Api, echo: EchoServer) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        api.create("a", echo.addr, f"127.0.0.1:{port}", enabled=False)
        status, msg = _err(api("POST", "/proxies/a", {"enabled": True}))
        assert status == 500 and "address already in use" in msg
        assert api("GET", "/proxies/a").json()["enabled"] is False
    assert api("POST", "/proxies/a", {"enabled": True}).json()["enabled"] is True
    assert is_listening(port)
    assert api("POST", "/proxies/a", {"enabled": False}).ok  # stopping twice is harmless
    assert api("POST", "/proxies/a", {"enabled": False}).ok


def test_go_client_style_save_with_null_toxics(api: Api, echo: EchoServer) -> None:
    body = api.create("a", echo.addr)
    full = {**body, "toxics": None, "enabled": False}
    got = api("POST", "/proxies/a", full)
    assert got.status_code == 200 and got.json()["enabled"] is False
