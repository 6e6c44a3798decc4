"""docs/PROTOCOL.md against the code: every test vector, the error list, the limits and the TXT fields.

Vector layout in the document: a fenced block with the info string
`cbor-vector` holding `dir:` (C→S or S→C), `map:` (CBOR diagnostic notation)
and `hex:` lines; indented lines continue the previous field. `id-vector` and
`token-vector` blocks use the same `key: value` layout.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cbor2
import pytest

from iris_mesh.membership._peer import PeerCard
from iris_mesh.messaging._ids import MessageIdGenerator
from iris_mesh.messaging._protocol import (
    C2S_OPS,
    ERROR_CODES,
    RETRYABLE_ERROR_CODES,
    S2C_OPS,
    Delivery,
    Limits,
    build_deliver,
    build_error,
    build_hello,
    build_inbox,
    build_move,
    build_ok,
    build_pong,
    build_presence,
    build_sent,
    parse_request,
)
from iris_mesh.messaging._sessions import HOLD_MAX_S
from iris_mesh.messaging._tokens import issue_token, token_secret, verify_token
from iris_mesh.sockets._codec import FrameError, decode, envelope
from iris_mesh.sockets._engine import _only

DOC = Path(__file__).resolve().parents[3] / "docs" / "PROTOCOL.md"
TEXT = DOC.read_text(encoding="utf-8")

# --- reading the document ---------------------------------------------------------------

_BLOCK_RE = re.compile(r"^```([a-z-]+)\n(.*?)^```", re.MULTILINE | re.DOTALL)
_TOKEN_RE = re.compile(
    r"""\s*(?:
        (?P<punct>[{}\[\]:,])
      | (?P<text>"(?:[^"\\]|\\.)*")
      | h'(?P<bytes>[0-9a-fA-F]*)'
      | (?P<float>-?\d+\.\d+(?:[eE][+-]?\d+)?)
      | (?P<int>-?\d+)
      | (?P<word>true|false|null)
    )""",
    re.VERBOSE,
)
_WORDS = {"true": True, "false": False, "null": None}


def blocks(kind: str) -> list[dict[str, str]]:
    """The `key: value` fields of every fenced block of `kind`; map lines join with a space, others with nothing."""
    found = []
    for info, body in _BLOCK_RE.findall(TEXT):
        if info != kind:
            continue
        fields: dict[str, list[str]] = {}
        key = None
        for line in body.splitlines():
            if line[:1].isspace() and key is not None:
                fields[key].append(line.strip())
            elif line.strip():
                key, _, value = line.partition(":")
                fields[key] = [value.strip()]
        found.append({k: (" " if k == "map" else "").join(v) for k, v in fields.items()})
    return found


def parse_diag(text: str) -> Any:
    """The value written in the subset of CBOR diagnostic notation this document uses."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text.rstrip()):
        match = _TOKEN_RE.match(text, pos)
        assert match, f"cannot read diagnostic notation at {text[pos:pos + 30]!r}"
        kind = match.lastgroup
        assert kind is not None
        tokens.append((kind, match.group(kind)))
        pos = match.end()
    value, rest = _value(tokens)
    assert not rest, f"trailing tokens after the value: {rest}"
    return value


def _value(tokens: list[tuple[str, str]]) -> tuple[Any, list[tuple[str, str]]]:
    (kind, raw), rest = tokens[0], tokens[1:]
    if kind == "text":
        return json.loads(raw), rest
    if kind == "bytes":
        return bytes.fromhex(raw), rest
    if kind == "int":
        return int(raw), rest
    if kind == "float":
        return float(raw), rest
    if kind == "word":
        return _WORDS[raw], rest
    assert raw in "{[", f"unexpected {raw!r}"
    close = "}" if raw == "{" else "]"
    items: list[Any] = []
    while rest[0][1] != close:
        if items:
            assert rest[0][1] == ",", f"expected ',' got {rest[0][1]!r}"
            rest = rest[1:]
        item, rest = _value(rest)
        if raw == "{":
            assert rest[0][1] == ":", f"expected ':' got {rest[0][1]!r}"
            value, rest = _value(rest[1:])
            item = (item, value)
        items.append(item)
    rest = rest[1:]
    if raw == "{":
        keys = [k for k, _ in items]
        assert len(set(keys)) == len(keys), f"duplicate keys in {keys}"
        return dict(items), rest
    return items, rest


def table_rows(heading: str) -> list[list[str]]:
    """The cells of the body rows of the first table under `heading`."""
    section = TEXT.split(heading, 1)[1]
    rows = []
    for line in section.splitlines():
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif rows:
            break
    return rows[2:]  # header and separator


VECTORS = blocks("cbor-vector")


def vector_id(vector: dict[str, str]) -> str:
    return f"{vector.get('dir')} {parse_diag(vector['map']).get('op')}"


# --- the vectors ------------------------------------------------------------------------


def test_the_document_has_vectors_in_both_directions() -> None:
    assert {v["dir"] for v in VECTORS} == {"C→S", "S→C"}
    assert all(set(v) == {"dir", "map", "hex"} for v in VECTORS)


@pytest.mark.parametrize("vector", VECTORS, ids=vector_id)
def test_hex_is_the_cbor_of_the_map_and_the_codec_reads_it(vector: dict[str, str]) -> None:
    frame_map = parse_diag(vector["map"])
    raw = bytes.fromhex(vector["hex"])
    assert cbor2.dumps(frame_map).hex() == raw.hex()
    assert decode(raw) == frame_map


def test_every_client_op_has_a_vector() -> None:
    ops = {parse_diag(v["map"])["op"] for v in VECTORS if v["dir"] == "C→S"}
    assert ops == set(C2S_OPS)


def test_every_server_frame_has_a_vector() -> None:
    ops = {parse_diag(v["map"])["op"] for v in VECTORS if v["dir"] == "S→C"}
    assert ops == set(S2C_OPS)


@pytest.mark.parametrize("vector", [v for v in VECTORS if v["dir"] == "C→S"], ids=vector_id)
def test_client_vectors_parse_and_encode_back_byte_for_byte(vector: dict[str, str]) -> None:
    frame_map = parse_diag(vector["map"])
    request = parse_request(decode(bytes.fromhex(vector["hex"])))
    assert request.op == frame_map["op"]
    assert cbor2.dumps(request.to_wire()).hex() == vector["hex"]


def _delivery(wire: dict[str, Any]) -> Delivery:
    assert list(wire) == ["id", "from", "ts", "body", "seq"]
    return Delivery(id=wire["id"], sender=wire["from"], ts_ms=wire["ts"], body=wire["body"], seq=wire["seq"])


# How each server frame's fields map onto its builder's arguments.
_BUILD: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "hello": lambda m: build_hello(m["node"], Limits(**m["limits"])),
    "ok": lambda m: build_ok(m["cid"]),
    "sent": lambda m: build_sent(m["cid"], m["id"], m["status"]),
    "deliver": lambda m: build_deliver(_delivery({k: m[k] for k in m if k not in ("v", "op")})),
    "inbox": lambda m: build_inbox(m["cid"], [_delivery(d) for d in m["msgs"]], m["cursor"], m["more"]),
    "presence": lambda m: build_presence(m["cid"], m["user"], m["online"], m["last_seen"]),
    "pong": lambda m: build_pong(m["cid"], m.get("user")),
    "error": lambda m: build_error(m["code"], m["detail"], cid=m.get("cid"), retry_after_s=m.get("retry_after")),
    "move": lambda m: build_move(m["detail"], [(e["node"], e["endpoint"], e["key"]) for e in m.get("edges", [])]),
}


def test_every_server_frame_has_a_builder_mapping() -> None:
    assert set(_BUILD) == set(S2C_OPS)


@pytest.mark.parametrize("vector", [v for v in VECTORS if v["dir"] == "S→C"], ids=vector_id)
def test_server_vectors_are_what_the_builders_make(vector: dict[str, str]) -> None:
    frame_map = parse_diag(vector["map"])
    assert cbor2.dumps(_BUILD[frame_map["op"]](frame_map)).hex() == vector["hex"]


def test_a_frame_refused_by_the_codec_gets_its_cid_back_right_after_op() -> None:
    # The vector is the gateway's answer to {"v": 2, "op": "ping", "cid": ...}: the codec's refusal, framed as
    # Engine._drain_gateway frames it (tests/integration/test_messaging.py checks the running gateway's key order).
    (vector,) = [v for v in VECTORS if v["dir"] == "S→C" and parse_diag(v["map"]).get("code") == "bad_version"]
    frame_map = parse_diag(vector["map"])
    with pytest.raises(FrameError) as refused:
        decode(cbor2.dumps({"v": 2, "op": "ping", "cid": frame_map["cid"]}))
    exc = refused.value
    reply = envelope("error", **_only(exc.ids, "cid"), code=exc.code, detail=str(exc))
    assert cbor2.dumps(reply).hex() == vector["hex"]


# --- tables and the other vectors -------------------------------------------------------


def test_error_table_is_the_closed_list_verbatim() -> None:
    rows = table_rows("## 8. Error codes")
    documented = {row[0].strip("`"): row[1] for row in rows}
    assert documented == dict(ERROR_CODES)
    retryable = {row[0].strip("`") for row in rows if row[2].startswith("yes")}
    assert all(row[2].startswith(("yes", "no")) for row in rows)
    assert retryable == RETRYABLE_ERROR_CODES


def test_limits_table_matches_the_defaults() -> None:
    rows = table_rows("## 7. Limits")
    assert {row[0].strip("`"): int(row[1]) for row in rows} == Limits().to_wire()


def test_the_hold_after_a_retryable_refusal_is_described_as_the_edge_keeps_it() -> None:
    order = TEXT.split("### 9.1 Order", 1)[1].split("### 9.2", 1)[0]
    paragraph = order[order.index("retryable error (section 8:"):]
    named = set(re.findall(r"`([a-z_]+)`", paragraph[: paragraph.index(")")]))
    assert named == RETRYABLE_ERROR_CODES
    assert f"at most {HOLD_MAX_S:g} seconds" in paragraph


def test_txt_table_names_every_field_a_node_advertises() -> None:
    card = PeerCard(
        cluster="iris", node_id="edge1", role="edge", region="eu", host="127.0.0.1", mesh_port=1,
        hb_port=2, admin_port=3, client_port=4, version=1, incarnation=1, key_fp="ab", client_key="k" * 40,
    )  # fmt: skip
    documented: set[str] = set()
    for row in table_rows("TXT record fields"):
        documented.update(re.findall(r"`([a-z]+)`", row[0]))
    assert documented == set(card.to_txt())


def test_id_vector_is_what_the_generator_makes() -> None:
    (vector,) = blocks("id-vector")
    generator = MessageIdGenerator(lambda n: bytes.fromhex(vector["random"]))
    wall_ms = int(vector["wall_ms"])
    ids = vector["ids"]
    expected = [ids[i : i + 32] for i in range(0, len(ids), 32)]
    assert [generator.next(wall_ms).hex() for _ in expected] == expected


def test_token_vector_verifies_and_is_reproduced() -> None:
    (vector,) = blocks("token-vector")
    secret = token_secret(vector["cookie"].encode())
    assert secret.hex() == vector["key"]
    context = b"iris-mesh login token signing key v1"
    assert secret == hmac.new(vector["cookie"].encode(), context, hashlib.sha256).digest()
    expiry = int(vector["expiry"])
    assert issue_token(secret, vector["user"], expiry) == vector["token"]
    verify_token(secret, vector["token"], vector["user"], now_s=expiry - 1)
    # The document's recipe, followed literally, gives the same signature.
    canonical = b"iris-mesh token\x00v1\x00" + vector["user"].encode() + b"\x00" + vector["expiry"].encode()
    mac = hmac.new(secret, canonical, hashlib.sha256).digest()
    assert vector["token"].rsplit(".", 1)[1] == base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
