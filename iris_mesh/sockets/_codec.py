"""CBOR frame codec shared by mesh links, heartbeats, the admin endpoint and clients.

Frame layout (docs/ARCHITECTURE.md section 3): one ZeroMQ message part holding one CBOR
map (RFC 8949) with short text keys. Every frame has

    v    protocol version (int)
    op   operation name (text)

Mesh frames (links and heartbeats) also carry

    src  sending node id (text)
    inc  sender's incarnation (int): tells a restarted process from its old self
    seq  per-link (or per-publisher) sequence number (int): tells gaps

A mesh frame that goes to several links alike is encoded once (`Body`): its
fields without the map header, to which each link splices the header and its own
`src`, `inc` and `seq` (`Body.frame`). Keys are unordered in a CBOR map, so the
frame decodes to the same map as one encoded whole.

Decoding never raises anything but FrameError: the engine counts and drops bad
frames (mesh) or answers them with an error (admin, client gateway).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any, Callable, Mapping

import cbor2

from iris_mesh import PROTOCOL_VERSION

__all__ = [
    "Body",
    "FrameError",
    "encode",
    "encode_body",
    "encode_pairs",
    "envelope",
    "decode",
    "decode_mesh",
    "PROTOCOL_VERSION",
    "DEFAULT_MAX_FRAME_BYTES",
]

DEFAULT_MAX_FRAME_BYTES = 1 << 20
# Our maps are shallow; a hostile frame must not recurse the decoder deep.
_MAX_DEPTH = 16
# Ids a sender matches replies by (a client's `cid`, meshctl's `rid`): an error about the frame carries them back.
_REQUEST_IDS = ("cid", "rid")
_MAX_REQUEST_ID = (1 << 63) - 1


class _TagRefused(Exception):
    def __init__(self, tag: int) -> None:
        super().__init__(f"tag {tag}")
        self.tag = tag


# Bignums (tags 2 and 3) are integers to CBOR (RFC 8949 section 3.4.3): decoded by cbor2, in linear time.
_INTEGER_TAGS = frozenset({2, 3})


class _NoTags(Mapping[int, Callable[[Any], Any]]):
    """Every CBOR tag but the bignums, each decoded by refusing it. The protocol uses none, and cbor2's own
    decoders of some cost time that grows with the square of their size (decimals, rationals of huge integers)
    or let a small frame stand for a huge value (shared references): any client could stall a node's engine
    with one frame."""

    def __getitem__(self, tag: int) -> Callable[[Any], Any]:
        if tag in _INTEGER_TAGS:
            raise KeyError(tag)

        def refuse(*_args: Any) -> Any:
            raise _TagRefused(tag)
        return refuse

    def __contains__(self, tag: object) -> bool:
        return tag not in _INTEGER_TAGS

    def __iter__(self) -> Iterator[int]:
        return iter(())

    def __len__(self) -> int:
        return 0


_NO_TAGS = _NoTags()


def _refuse_tag(_decoder: Any, tag: cbor2.CBORTag) -> Any:
    """cbor2's hook for the tags it has no decoder of (every one is in _NO_TAGS already: a backstop)."""
    raise _TagRefused(tag.tag)


def _refused_tag(exc: BaseException) -> int | None:
    """The tag a decode failed on, if `exc` came from refusing one (cbor2 may wrap it)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, _TagRefused):
            return seen.tag
        seen = seen.__cause__ or seen.__context__
    return None


class FrameError(ValueError):
    """A frame that cannot be accepted. `code` is a documented error code.

    `ids`: the request ids (`cid`, `rid`) of a frame that decoded to a map, where
    readable (a uint below 2**63), for the error reply to carry: the sender
    matches replies by them.
    """

    __slots__ = ("code", "ids")

    def __init__(self, code: str, detail: str, ids: dict[str, int] | None = None) -> None:
        super().__init__(detail)
        self.code = code
        self.ids = ids or {}


def encode(msg: Mapping[str, Any]) -> bytes:
    """Encode one frame; the caller supplies `v` and `op` (see `envelope`)."""
    return cbor2.dumps(msg)


# Length of a CBOR map header by its first byte (major type 5): the count inline, or in 1, 2, 4 or 8 more bytes.
_MAP_HEADER_BYTES = {**{0xA0 + n: 1 for n in range(24)}, 0xB8: 2, 0xB9: 3, 0xBA: 5, 0xBB: 9}


def _map_header(count: int) -> bytes:
    if count < 24:
        return bytes((0xA0 + count,))
    if count < 0x100:
        return bytes((0xB8, count))
    if count < 0x10000:
        return b"\xb9" + count.to_bytes(2, "big")
    return b"\xba" + count.to_bytes(4, "big")


class Body:
    """A frame map encoded once, for links that each add their own fields (see the module docstring)."""

    __slots__ = ("count", "pairs")

    def __init__(self, count: int, pairs: memoryview) -> None:
        self.count = count  # entries of the map
        self.pairs = pairs  # their encoding, without the map header

    def frame(self, extra_count: int, extra_pairs: bytes) -> bytes:
        """The whole frame: this body plus `extra_count` more entries, encoded as `extra_pairs`."""
        return b"".join((_map_header(self.count + extra_count), self.pairs, extra_pairs))


def encode_body(msg: Mapping[str, Any]) -> Body:
    """Encode a frame map (with `v` and `op`, see `envelope`) for `Body.frame`."""
    encoded = cbor2.dumps(msg)
    header = _MAP_HEADER_BYTES[encoded[0]]
    count = int.from_bytes(encoded[1:header], "big") if header > 1 else encoded[0] - 0xA0
    return Body(count, memoryview(encoded)[header:])


def encode_pairs(**fields: Any) -> bytes:
    """The encoding of map entries (key, value) to splice into a Body (their order is kept)."""
    return b"".join(cbor2.dumps(part) for item in fields.items() for part in item)


def envelope(op: str, **fields: Any) -> dict[str, Any]:
    """A frame map with the current protocol version."""
    return {"v": PROTOCOL_VERSION, "op": op, **fields}


def decode(frame: bytes, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> dict[str, Any]:
    """Decode and check the envelope of one frame, or raise FrameError (and nothing else, whatever the bytes)."""
    try:
        return _decode(frame, max_frame_bytes)
    except FrameError:
        raise
    except Exception as exc:  # a check that chokes on a hostile value must not escape as another error
        raise FrameError("bad_frame", f"frame could not be checked ({type(exc).__name__})") from None


def _decode(frame: bytes, max_frame_bytes: int) -> dict[str, Any]:
    if len(frame) > max_frame_bytes:
        raise FrameError("too_large", f"frame of {len(frame)} bytes exceeds the limit of {max_frame_bytes}")
    buffer = io.BytesIO(frame)
    try:
        msg = cbor2.CBORDecoder(
            buffer,
            max_depth=_MAX_DEPTH,
            allow_duplicate_keys=False,
            strict_hashable_types=True,
            semantic_decoders=_NO_TAGS,
            tag_hook=_refuse_tag,
        ).decode()
    except Exception as exc:  # cbor2 raises several types on hostile input; all mean "bad frame"
        tag = _refused_tag(exc)
        if tag is None:
            raise FrameError("bad_frame", f"not valid CBOR: {_shortened(str(exc))}") from None
        if frame[:1] and 0xC0 <= frame[0] <= 0xDB:  # the whole frame is tagged
            raise FrameError("bad_frame", f"frame is a tagged CBOR map (tag {tag}): send the map itself, without "
                                          "a tag") from None
        raise FrameError("bad_frame", f"CBOR tags are not used by this protocol (tag {tag} in the frame)") from None
    if buffer.tell() != len(frame):
        raise FrameError("bad_frame", f"{len(frame) - buffer.tell()} bytes of trailing data after the CBOR map")
    if not isinstance(msg, dict):
        if isinstance(msg, Mapping):  # cbor2 makes a map inside a tag (self-describe 55799, say) a frozendict
            raise FrameError("bad_frame", "frame is a tagged CBOR map: send the map itself, without a tag")
        raise FrameError("bad_frame", f"frame is a CBOR {type(msg).__name__}, not a map")
    ids = {key: value for key in _REQUEST_IDS
           if type(value := msg.get(key)) is int and 0 <= value <= _MAX_REQUEST_ID}
    version = msg.get("v")
    if not isinstance(version, int) or isinstance(version, bool):
        raise FrameError("bad_frame", "frame has no integer 'v' (protocol version)", ids)
    if version != PROTOCOL_VERSION:
        shown = version if abs(version) < 1 << 63 else f"of {version.bit_length()} bits"
        raise FrameError("bad_version", f"protocol version {shown} is not supported (this node speaks {PROTOCOL_VERSION})",
                         ids)
    op = msg.get("op")
    if not isinstance(op, str) or not op:
        raise FrameError("bad_frame", "frame has no text 'op'", ids)
    return msg


_MAX_DETAIL_CHARS = 200  # of the decoder's words in an error reply: they may quote the frame (a duplicate key)


def _shortened(text: str) -> str:
    return text if len(text) <= _MAX_DETAIL_CHARS else f"{text[:_MAX_DETAIL_CHARS]}... ({len(text):,} characters)"


def decode_mesh(frame: bytes, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> dict[str, Any]:
    """Decode a mesh frame: the envelope plus text `src`, integer `inc` and `seq`."""
    msg = decode(frame, max_frame_bytes=max_frame_bytes)
    if not isinstance(msg.get("src"), str) or not msg["src"]:
        raise FrameError("bad_frame", "mesh frame has no text 'src'")
    for key in ("inc", "seq"):
        value = msg.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise FrameError("bad_frame", f"mesh frame has no non-negative integer {key!r}")
    return msg
