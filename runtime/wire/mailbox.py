"""The mailbox codec: length-prefixed msgpack frames between host and sandbox.

A frame is a 4-byte big-endian unsigned length followed by a msgpack body; the
body is the envelope array ``[kind, ref, target, payload]``. ``kind`` is one of
:data:`CALL`, :data:`CAST`, :data:`REPLY`, :data:`ERROR`, :data:`SYSTEM`; ``ref``
is an ``int`` or ``None`` (it pairs a reply with its call); ``target`` is a ``str``
or ``None`` (the name of the receiving actor).

Values cross faithfully, not just "as JSON would":

=====================  ============================================================
sent                   received
=====================  ============================================================
None, bool, float,     the same (msgpack native)
str, bytes, list,
dict
int                    the same; outside 64 bits through an ext type
tuple                  tuple (an ext type: msgpack would make it a list), nested too
set, frozenset         set, frozenset (ext types)
dict with tuple keys   the same
aware datetime         the same instant, as a ``datetime`` in UTC (msgpack timestamp;
                       the original tzinfo is not kept)
naive datetime         the same naive datetime (an ext type)
bytearray, memoryview  bytes
subclasses of the      the base type: an ``IntEnum``/``IntFlag`` member arrives as its
above                  ``int`` value, a ``StrEnum`` (or ``(str, Enum)``) member as its
                       ``str`` value, a namedtuple as a tuple, an ``OrderedDict`` or
                       ``defaultdict`` as a dict, whatever ``allow_pickle`` says
anything else          with ``allow_pickle=True``: pickled with cloudpickle (objects,
                       functions, lambdas, plain ``Enum`` members, dates, Decimals...);
                       otherwise ``TypeError`` naming the type
=====================  ============================================================

A pickled value is only unpickled by a codec with ``allow_pickle=True``; any other
codec refuses the frame with :class:`~runtime.errors.ProtocolError`. Unpickling
runs code chosen by the sender: only allow it on the receiving side of a peer you
trust as much as your own process.

>>> codec = Codec()
>>> data = codec.frame(CALL, 17, "counter", ("incr", 1))
>>> FrameDecoder(codec).feed(data)
[Envelope(kind='call', ref=17, target='counter', payload=('incr', 1))]
"""

from __future__ import annotations

import datetime as _dt
import enum
import struct
import threading
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import cloudpickle
import msgpack
from msgpack import ExtType

from runtime.errors import ProtocolError

__all__ = [
    "CALL",
    "CAST",
    "REPLY",
    "ERROR",
    "SYSTEM",
    "KINDS",
    "DEFAULT_MAX_FRAME",
    "PREFIX_SIZE",
    "MAX_NESTING",
    "MAX_ITEMS",
    "Envelope",
    "Codec",
    "FrameDecoder",
]

CALL = "call"
CAST = "cast"
REPLY = "reply"
ERROR = "error"
SYSTEM = "system"
KINDS: frozenset[str] = frozenset({CALL, CAST, REPLY, ERROR, SYSTEM})

DEFAULT_MAX_FRAME = 8 * 1024 * 1024
PREFIX_SIZE = 4
_MAX_PREFIX = 2**32 - 1

# Ext type codes. They are part of the wire format: never renumber, only add.
EXT_TUPLE = 1
EXT_SET = 2
EXT_FROZENSET = 3
EXT_BIGINT = 4
EXT_NAIVE_DATETIME = 5
EXT_PICKLE = 6

_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1
_NAIVE_DT = struct.Struct(">HBBBBBIB")  # year..microsecond, fold
_PREFIX = struct.Struct(">I")
_prefix_of = _PREFIX.unpack_from

# How deep tuples/sets/frozensets may nest inside each other. Each level is one
# more unpackb call, and msgpack's C unpacker puts ~40 KiB on the C stack per call:
# a hostile frame nesting ~200 of them segfaults the receiver (8 MiB stack). The
# encoder refuses what the decoder would, so only a hostile peer meets the limit.
MAX_NESTING = 32
# What an untrusted peer's frame may decode to, at most: arrays and maps plus their
# elements. The frame size bounds strings and bytes (1 byte in, 1 byte held), but
# not containers: an 8 MiB frame of empty arrays is 8 million lists (~500 MiB).
# A million items keeps one frame's objects under ~64 MiB.
MAX_ITEMS = 1_000_000
# Frames up to this size are not counted: they cannot decode to more than ~4 MiB.
_COUNT_FROM = 64 * 1024
# Reads up to this size are decoded by a FrameDecoder's streaming unpacker (which
# copies them); larger ones frame by frame with unpackb.
_UNPACK_MAX = 64 * 1024
# A Packer keeps its grown buffer; drop a thread's packer after a large frame so a
# single big message does not pin megabytes per thread for ever.
_PACKER_KEEP_BYTES = 1024 * 1024

_SUPPORTED = "None, bool, int, float, str, bytes, list, dict, tuple, set, frozenset, datetime"


class Envelope(NamedTuple):
    """One decoded frame: ``[kind, ref, target, payload]``.

    >>> Envelope(CAST, None, "log", "hello").kind
    'cast'
    """

    kind: str
    ref: int | None
    target: str | None
    payload: Any


def _short(obj: object, limit: int = 60) -> str:
    # Error messages quote what the peer sent, which may be megabytes long.
    text = repr(obj)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(obj: object) -> str:
    if type(obj) is list:
        return f"an array of {len(obj)} items"
    return type(obj).__name__


class Codec:
    """Encodes values and frames to msgpack and back; one per channel side.

    ``allow_pickle`` lets values that msgpack cannot carry cross as cloudpickle
    data, and lets this codec unpickle such data when it receives it.
    ``max_frame`` bounds a frame body in bytes, both ways. A codec is safe to share
    between threads (each thread packs with its own ``msgpack.Packer``).

    >>> c = Codec()
    >>> c.decode(c.encode({("a", 1): {1, 2}}))
    {('a', 1): {1, 2}}
    >>> c.frame(CAST, None, "log", "hi")[:4]  # the body is 14 bytes
    b'\\x00\\x00\\x00\\x0e'
    """

    __slots__ = (
        "allow_pickle", "max_frame", "max_items", "_local", "_pack_kw", "_unpack_kws",
        "_bounded_kws",
    )

    def __init__(
        self,
        *,
        allow_pickle: bool = False,
        max_frame: int = DEFAULT_MAX_FRAME,
        max_items: int | None = None,
    ) -> None:
        if not isinstance(max_frame, int) or not 0 < max_frame <= _MAX_PREFIX:
            raise ValueError(
                f"invalid max_frame={max_frame!r}: expected an int in 1..{_MAX_PREFIX} "
                "(the length prefix is 4 bytes)"
            )
        if max_items is not None and (type(max_items) is not int or max_items < 1):
            raise ValueError(f"invalid max_items={max_items!r}: expected a positive int or None")
        self.allow_pickle = bool(allow_pickle)
        self.max_frame = max_frame
        #: Bound on arrays + maps + their elements per decoded frame (None: no bound
        #: beyond the frame size); for frames from a peer that is not trusted.
        self.max_items = max_items
        self._local = threading.local()
        # strict_types: otherwise msgpack packs tuples (and int/str/dict subclasses)
        # as their base type without asking us, and tuples come back as lists.
        self._pack_kw: dict[str, Any] = {
            "use_bin_type": True,
            "strict_types": True,
            "datetime": True,
        }
        # One set of unpackb arguments per nesting level: the ext hook of level n
        # knows its depth without any per-call bookkeeping.
        self._unpack_kws = self._level_kws(None)
        # Counting items costs a Python call per container, so only frames large
        # enough to matter are counted: a smaller one cannot amplify past a few MiB.
        self._bounded_kws = self._level_kws(max_items) if max_items is not None else None

    def __repr__(self) -> str:
        return f"Codec(allow_pickle={self.allow_pickle}, max_frame={self.max_frame})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Picklable by its settings (e.g. to hand a child process its config):
        # the per-thread packers and hooks are rebuilt on the other side.
        return (_restore_codec, (self.allow_pickle, self.max_frame, self.max_items))

    def _level_kws(self, max_items: int | None) -> list[dict[str, Any]]:
        levels: list[dict[str, Any]] = [
            {
                "raw": False,
                "strict_map_key": False,  # tuple, int, bytes... keys are legitimate
                "timestamp": 3,  # msgpack timestamps come back as aware UTC datetimes
            }
            for _ in range(MAX_NESTING + 1)
        ]
        for depth, kw in enumerate(levels):
            kw["ext_hook"] = self._make_ext_hook(depth, levels)
            if max_items is not None:
                kw.update(self._item_bounds(max_items))
        return levels

    def _item_bounds(self, max_items: int) -> dict[str, Any]:
        """unpackb hooks that count containers and their elements per frame (the
        count is reset per frame in :meth:`decode`), so the objects one frame
        decodes to are bounded whatever its shape. The count is per thread, so
        the codec stays shareable.
        """
        local = self._local

        def count(n: int) -> None:
            left = local.items_left - n
            local.items_left = left
            if left < 0:
                raise ProtocolError(
                    f"frame decodes to more than max_items={max_items} arrays, maps and elements"
                )

        def list_hook(items: list[Any]) -> list[Any]:
            count(len(items) + 1)
            return items

        def object_hook(obj: dict[Any, Any]) -> dict[Any, Any]:
            count(2 * len(obj) + 1)
            return obj

        return {"list_hook": list_hook, "object_hook": object_hook}

    # -- encoding -----------------------------------------------------------------

    def _new_packer(self, depth: int) -> msgpack.Packer:
        nested: list[Callable[[Any], bytes]] = []

        def default(obj: Any) -> Any:
            # A Packer is not re-entrant: the items of a tuple or set are packed by
            # the packer of the next nesting level, made once and then reused.
            if not nested:
                if depth < MAX_NESTING:
                    nested.append(self._new_packer(depth + 1).pack)
                else:
                    nested.append(_too_deep)
            return self._to_msgpack(obj, nested[0])

        # Small initial buffers for nested levels: they only ever hold one value.
        size = 64 * 1024 if depth == 0 else 4096
        return msgpack.Packer(default=default, buf_size=size, **self._pack_kw)

    def _to_msgpack(self, obj: Any, pack: Callable[[Any], bytes]) -> Any:
        """Turn what msgpack refused into something it packs (usually an ExtType)."""
        t = type(obj)
        if t is tuple:
            return ExtType(EXT_TUPLE, pack(list(obj)))
        if t is int:  # exact ints only reach here when outside 64 bits
            return _bigint_ext(obj)
        if t is set:
            return ExtType(EXT_SET, pack(list(obj)))
        if t is frozenset:
            return ExtType(EXT_FROZENSET, pack(list(obj)))
        if isinstance(obj, _dt.datetime):
            if obj.tzinfo is not None and obj.utcoffset() is not None:
                return msgpack.Timestamp.from_datetime(obj)
            return ExtType(
                EXT_NAIVE_DATETIME,
                _NAIVE_DT.pack(
                    obj.year,
                    obj.month,
                    obj.day,
                    obj.hour,
                    obj.minute,
                    obj.second,
                    obj.microsecond,
                    obj.fold,
                ),
            )
        # Subclasses of native types (IntEnum, StrEnum, namedtuple, OrderedDict...)
        # degrade to their base type: the receiver may not have the subclass, and
        # a message should not change type with the security profile.
        if isinstance(obj, int):  # bool cannot be subclassed, so never lands here
            value = int.__int__(obj)
            return value if _INT_MIN <= value <= _INT_MAX else _bigint_ext(value)
        if isinstance(obj, str):
            return str.__str__(obj)
        if isinstance(obj, float):
            return float.__float__(obj)
        if isinstance(obj, bytes):
            return bytes.__bytes__(obj)
        if isinstance(obj, tuple):
            return ExtType(EXT_TUPLE, pack(list(obj)))
        if isinstance(obj, list):
            return list(obj)
        if isinstance(obj, dict):
            return dict(obj)
        if isinstance(obj, frozenset):
            return ExtType(EXT_FROZENSET, pack(list(obj)))
        if isinstance(obj, set):
            return ExtType(EXT_SET, pack(list(obj)))
        if self.allow_pickle:
            try:
                return ExtType(EXT_PICKLE, cloudpickle.dumps(obj))
            except Exception as exc:
                raise TypeError(
                    f"cannot send a {_qualname(obj)} value: pickling it failed ({exc})"
                ) from exc
        hint = ""
        if isinstance(obj, enum.Enum):
            hint = " (for an Enum member, send its .value, or use IntEnum/StrEnum)"
        raise TypeError(
            f"cannot send a {_qualname(obj)} value over the mailbox: only msgpack-native "
            f"values can cross ({_SUPPORTED}) unless the codec allows pickling "
            f"(allow_pickle=True){hint}"
        )

    def _packer(self) -> Callable[[Any], bytes]:
        try:
            return self._local.pack
        except AttributeError:
            pack = self._local.pack = self._new_packer(0).pack
            return pack

    def encode(self, obj: Any) -> bytes:
        """Encode one value to a msgpack body (no length prefix).

        >>> Codec().encode([1, "a"])
        b'\\x92\\x01\\xa1a'
        """
        try:  # self._packer(), its common case inline: every frame passes here
            pack = self._local.pack
        except AttributeError:
            pack = self._packer()
        body = pack(obj)
        if len(body) > _PACKER_KEEP_BYTES:
            del self._local.pack
        return body

    def frame(self, kind: str, ref: int | None, target: str | None, payload: Any) -> bytes:
        """Encode one envelope as a whole frame: length prefix + msgpack body.

        Raises ``ValueError`` for a bad kind, ref or target, ``TypeError`` for a
        payload that cannot cross, and ``ProtocolError`` when the body is over
        ``max_frame`` (the peer would refuse it, so it is never sent).

        >>> Codec().frame(REPLY, 3, None, "ok")
        b'\\x00\\x00\\x00\\x0c\\x94\\xa5reply\\x03\\xc0\\xa2ok'
        """
        if type(kind) is not str or kind not in KINDS:
            raise ValueError(
                f"invalid kind {_short(kind)}: expected one of {', '.join(sorted(KINDS))}"
            )
        if ref is not None and type(ref) is not int:
            raise ValueError(f"invalid ref {_short(ref)}: expected an int or None")
        if target is not None and type(target) is not str:
            raise ValueError(f"invalid target {_short(target)}: expected a str or None")
        return self.pack_frame(kind, ref, target, payload)

    def pack_frame(self, kind: str, ref: int | None, target: str | None, payload: Any) -> bytes:
        """:meth:`frame` without checking ``kind``, ``ref`` and ``target``: for a
        caller that knows them good (a reply's constant kind, a ref it counted).
        Raises ``TypeError`` and ``ProtocolError`` as :meth:`frame` does.

        >>> Codec().pack_frame(REPLY, 3, None, "ok") == Codec().frame(REPLY, 3, None, "ok")
        True
        """
        try:  # self.encode(), inline (its packer lookup): every frame passes here
            pack = self._local.pack
        except AttributeError:
            pack = self._packer()
        body = pack([kind, ref, target, payload])
        size = len(body)
        if size > _PACKER_KEEP_BYTES:
            del self._local.pack  # as encode() does
        if size > self.max_frame:
            raise ProtocolError(
                f"{kind} frame to {target!r} is {size} bytes, over max_frame={self.max_frame}; "
                "send less per message or raise max_frame on both sides"
            )
        return _PREFIX.pack(size) + body

    def frames(self, envelopes: Iterable[tuple[str, int | None, str | None, Any]]) -> bytes:
        """Encode many envelopes as concatenated frames, for one batched write.

        >>> c = Codec()
        >>> len(FrameDecoder(c).feed(c.frames([(CAST, None, "a", 1), (CAST, None, "b", 2)])))
        2
        """
        frame = self.frame
        return b"".join([frame(*env) for env in envelopes])

    def casts(self, target: str, payloads: Iterable[Any]) -> bytes:
        """Frames of casts to one ``target``, concatenated for one write: :meth:`frames`
        with the target checked once instead of per frame (a batch is hundreds).

        >>> c = Codec()
        >>> c.casts("a", [1, 2]) == c.frames([(CAST, None, "a", 1), (CAST, None, "a", 2)])
        True
        """
        if type(target) is not str:  # frame() says why (for a batch that is not empty)
            return self.frames((CAST, None, target, p) for p in payloads)
        pack = self.pack_frame
        return b"".join([pack(CAST, None, target, p) for p in payloads])

    # -- decoding -----------------------------------------------------------------

    def _make_ext_hook(self, depth: int, levels: list[dict[str, Any]]) -> Callable[[int, bytes], Any]:
        def ext_hook(code: int, data: bytes) -> Any:
            make = _CONTAINERS.get(code)
            if make is None:
                return self._scalar_ext(code, data)
            if depth >= MAX_NESTING:
                raise ProtocolError(
                    f"tuples/sets nest more than MAX_NESTING={MAX_NESTING} levels deep"
                )
            items = msgpack.unpackb(data, **levels[depth + 1])
            if type(items) is not list:
                raise ProtocolError(
                    f"{make.__name__} ext must hold an array, got {_describe(items)}"
                )
            return make(items)

        return ext_hook

    def _scalar_ext(self, code: int, data: bytes) -> Any:
        if code == EXT_BIGINT:
            return int.from_bytes(data, "big", signed=True)
        if code == EXT_NAIVE_DATETIME:
            if len(data) != _NAIVE_DT.size:
                raise ProtocolError(
                    f"naive datetime ext must be {_NAIVE_DT.size} bytes, got {len(data)}"
                )
            *fields, fold = _NAIVE_DT.unpack(data)
            return _dt.datetime(*fields, fold=fold)
        if code == EXT_PICKLE:
            if not self.allow_pickle:
                raise ProtocolError(
                    "the peer sent a pickled Python object but this codec does not allow "
                    "pickling (allow_pickle=False); refusing to unpickle it"
                )
            return cloudpickle.loads(data)
        raise ProtocolError(f"unknown msgpack ext type code {code} ({len(data)} bytes)")

    def decode(self, data: bytes | bytearray | memoryview) -> Any:
        """Decode one msgpack body (no length prefix) made by :meth:`encode`.

        Anything that does not decode is a ``ProtocolError``.

        >>> c = Codec()
        >>> c.decode(c.encode((1, frozenset({2}))))
        (1, frozenset({2}))
        """
        kws = self._unpack_kws
        if self._bounded_kws is not None and len(data) > _COUNT_FROM:
            self._local.items_left = self.max_items
            kws = self._bounded_kws
        try:
            return msgpack.unpackb(data, **kws[0])
        except ProtocolError:
            raise
        except Exception as exc:  # the peer's bytes can make msgpack raise anything
            raise ProtocolError(f"undecodable body: {type(exc).__name__}: {exc}") from exc

    def decode_envelope(self, body: bytes | bytearray | memoryview) -> Envelope:
        """Decode a frame body into an :class:`Envelope`, checking its shape.

        >>> c = Codec()
        >>> c.decode_envelope(c.frame(CAST, None, "x", [1])[4:])
        Envelope(kind='cast', ref=None, target='x', payload=[1])
        """
        obj = self.decode(body)
        env = _envelope(obj)
        if env is not None:
            return env
        if type(obj) is not list or len(obj) != 4:
            raise ProtocolError(f"expected [kind, ref, target, payload], got {_describe(obj)}")
        kind, ref, target, _ = obj
        if type(kind) is not str or kind not in KINDS:
            raise ProtocolError(
                f"unknown kind {_short(kind)}: expected one of {', '.join(sorted(KINDS))}"
            )
        if ref is not None and type(ref) is not int:
            raise ProtocolError(f"ref must be an int or nil, got {_describe(ref)}")
        raise ProtocolError(f"target must be a str or nil, got {_describe(target)}")


_new_tuple = tuple.__new__


def _envelope(obj: Any) -> Envelope | None:
    """``obj`` (a decoded body) as an :class:`Envelope`, or None if it is not one
    (:meth:`Codec.decode_envelope` then says why)."""
    if type(obj) is list and len(obj) == 4:
        kind, ref, target, _ = obj
        if (
            type(kind) is str
            and kind in KINDS
            and (ref is None or type(ref) is int)
            and (target is None or type(target) is str)
        ):
            return _new_tuple(Envelope, obj)  # skips NamedTuple.__new__'s arg handling
    return None


def _restore_codec(allow_pickle: bool, max_frame: int, max_items: int | None = None) -> Codec:
    return Codec(allow_pickle=allow_pickle, max_frame=max_frame, max_items=max_items)


_CONTAINERS: dict[int, type] = {EXT_TUPLE: tuple, EXT_SET: set, EXT_FROZENSET: frozenset}


def _too_deep(items: list[Any]) -> bytes:
    raise ValueError(
        f"value nests tuples/sets more than MAX_NESTING={MAX_NESTING} levels deep; "
        "the peer would refuse it: flatten it, or use lists"
    )


def _bigint_ext(value: int) -> ExtType:
    return ExtType(EXT_BIGINT, value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True))


def _qualname(obj: object) -> str:
    t = type(obj)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


class FrameDecoder:
    """Streaming frame decoder: feed it bytes as they arrive, get whole envelopes.

    Handles frames split over any number of reads (the length prefix included)
    and many frames per read. A length prefix over the codec's ``max_frame`` is
    refused as soon as it is seen, before its body is buffered. Any error is a
    ``ProtocolError`` that says which frame (counted from 1) was wrong; the
    envelopes decoded before the bad frame in the same :meth:`feed` are still
    returned, and the error is raised by the next call (:meth:`feed` or
    :meth:`check`). After an error the decoder stays failed.

    >>> c = Codec()
    >>> data = c.frame(CALL, 1, "a", None)
    >>> d = FrameDecoder(c)
    >>> d.feed(data[:3]), d.feed(data[3:])
    ([], [Envelope(kind='call', ref=1, target='a', payload=None)])
    """

    __slots__ = ("_codec", "_max", "_buf", "_count", "error", "_small", "_small_end", "_small_kw",
                 "_un")

    def __init__(self, codec: Codec) -> None:
        self._codec = codec
        self._max = codec.max_frame
        # Frames up to this size are decoded in feed() itself: never counted for
        # max_items (see Codec.decode), they need only the codec's level-0 arguments.
        self._small = min(codec.max_frame, _COUNT_FROM)
        self._small_end = self._small + PREFIX_SIZE  # a whole small frame's length, at most
        self._small_kw = codec._unpack_kws[0]
        self._un: msgpack.Unpacker | None = None  # see _unpacker
        # Only the incomplete tail of the stream lives here; whole frames in a read
        # are decoded straight from the caller's buffer.
        self._buf = bytearray()
        self._count = 0
        #: The ``ProtocolError`` the stream broke the protocol with, or None (read it,
        #: never set it: the decoder is failed for good once it is set).
        self.error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held of a frame that has not fully arrived yet.

        >>> FrameDecoder(Codec()).buffered
        0
        """
        return len(self._buf)

    @property
    def frames_decoded(self) -> int:
        """How many frames were decoded so far.

        >>> FrameDecoder(Codec()).frames_decoded
        0
        """
        return self._count

    @property
    def failed(self) -> bool:
        """Whether the stream broke the protocol (the decoder is then unusable).

        >>> FrameDecoder(Codec()).failed
        False
        """
        return self.error is not None

    def check(self) -> None:
        """Raise the pending ``ProtocolError``, if the stream has broken the protocol.

        >>> FrameDecoder(Codec()).check()
        """
        if self.error is not None:
            raise self.error

    def eof(self) -> None:
        """Tell the decoder the stream ended; raises ``ProtocolError`` if mid-frame.

        >>> d = FrameDecoder(Codec())
        >>> d.feed(b"\\x00\\x00")
        []
        >>> d.eof()
        Traceback (most recent call last):
        ...
        runtime.errors.ProtocolError: stream ended mid-frame: frame 1 has 2 of its 4 prefix bytes
        """
        self.check()
        held = len(self._buf)
        if not held:
            return
        frame_no = self._count + 1
        if held < PREFIX_SIZE:
            what = f"{held} of its {PREFIX_SIZE} prefix bytes"
        else:
            size = _PREFIX.unpack_from(self._buf)[0]
            what = f"{held - PREFIX_SIZE} of its {size} body bytes"
        self.error = ProtocolError(f"stream ended mid-frame: frame {frame_no} has {what}")
        raise self.error

    def _unpacker(self) -> msgpack.Unpacker:
        """This decoder's streaming unpacker for small frames, made on first use.

        Fed a read's bytes, it decodes frame after frame with one ``unpack()``
        each: the codec's arguments are parsed once here, where ``unpackb`` parses
        them per frame (they cost about as much as decoding a small frame). Its
        limits are a small frame's, so no frame it decodes can ask for more than
        ``unpackb`` would give a frame of that size.
        """
        lim = self._small
        un = self._un = msgpack.Unpacker(
            None, read_size=4096, max_buffer_size=2 * _UNPACK_MAX, max_str_len=lim,
            max_bin_len=lim, max_array_len=lim, max_map_len=lim // 2, max_ext_len=lim,
            **self._small_kw,
        )
        return un

    def feed(self, data: bytes | bytearray | memoryview) -> list[Envelope]:
        """Add bytes from the stream; return the envelopes completed by them.

        Small frames are decoded by the streaming unpacker (:meth:`_unpacker`),
        which must stay in step with the stream: a frame it does not decode to
        exactly its length (a malformed one) drops it, and :meth:`Codec.decode_envelope`
        decodes that frame again and says what is wrong with it. A hot path inlined
        for speed (every frame of both sides passes here), hence its length.

        >>> c = Codec()
        >>> FrameDecoder(c).feed(c.frame(CAST, None, "a", 1) * 2)[1].payload
        1
        """
        if self.error is not None:
            raise self.error
        buf = self._buf
        if not buf:
            # The common case, one whole small frame in one read (a call, its reply).
            end = len(data)
            if PREFIX_SIZE < end <= self._small_end and _prefix_of(data)[0] == end - PREFIX_SIZE:
                lone = self._un or self._unpacker()
                obj = None
                try:
                    base = lone.tell()
                    lone.feed(data)
                    lone.read_bytes(PREFIX_SIZE)
                    obj = lone.unpack()
                    if lone.tell() != base + end:
                        obj = None
                except Exception:
                    pass
                env = _envelope(obj)
                if env is not None:
                    self._count += 1
                    return [env]
                self._un = None  # out of step: the general path below reports it
        if buf:
            buf += data
            src: bytes | bytearray | memoryview = buf
        else:
            src = data
        out: list[Envelope] = []
        append = out.append
        end = len(src)
        pos = 0
        limit = self._max
        small = self._small
        decode = self._codec.decode_envelope
        frame_no = self._count
        un: msgpack.Unpacker | None = None
        if end <= _UNPACK_MAX:  # else copying it all into the unpacker costs more
            un = self._un or self._unpacker()
            base = un.tell()
            un.feed(src)
        try:
            while end - pos >= PREFIX_SIZE:
                frame_no += 1
                size = _PREFIX.unpack_from(src, pos)[0]
                if size > limit:
                    raise ProtocolError(f"length prefix of {size} bytes is over max_frame={limit}")
                start = pos + PREFIX_SIZE
                if end - start < size:
                    break
                pos = start + size
                env = None
                if un is not None:
                    try:
                        un.read_bytes(PREFIX_SIZE)
                        if size <= small:
                            obj = un.unpack()
                            if un.tell() == base + pos:
                                env = _envelope(obj)
                        else:
                            un.read_bytes(size)  # a large frame: decode() counts its items
                    except Exception:
                        pass
                    if env is None and size <= small:
                        un = self._un = None  # out of step with the stream
                append(env if env is not None else decode(src[start:pos]))
        except ProtocolError as exc:
            self._un = None
            self._count = frame_no - 1
            self.error = ProtocolError(f"frame {frame_no}: {exc}")
            self.error.__cause__ = exc.__cause__
            buf.clear()
            if out:
                return out  # deliver what was good; the error waits for the next call
            raise self.error from exc.__cause__
        if un is not None and pos < end:
            un.read_bytes(end - pos)  # the incomplete tail: kept in _buf, fed again with the rest
        self._count += len(out)
        if src is buf:
            # bytearray drops a prefix by moving its start offset, without copying
            # the rest, so consuming frames from the front stays linear.
            del buf[:pos]
        elif pos < end:
            buf += src[pos:]
        return out
