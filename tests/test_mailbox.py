"""The msgpack mailbox codec: value round trips, framing, and refusing bad input."""

from __future__ import annotations

import collections
import datetime as dt
import enum
import pickle
import struct
import threading

import msgpack
import pytest

from runtime.errors import ProtocolError
from runtime.wire.mailbox import (
    CALL,
    CAST,
    DEFAULT_MAX_FRAME,
    ERROR,
    KINDS,
    MAX_NESTING,
    REPLY,
    SYSTEM,
    Codec,
    Envelope,
    FrameDecoder,
)

pytestmark = pytest.mark.timeout(30)

UTC = dt.UTC
PLUS2 = dt.timezone(dt.timedelta(hours=2))


def assert_same(got: object, want: object) -> None:
    """Equal, and of the same types all the way down (1 == 1.0 == True is not enough)."""
    assert type(got) is type(want), f"{got!r} is {type(got).__name__}, want {type(want).__name__}"
    if isinstance(want, (list, tuple)):
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert_same(g, w)
    elif isinstance(want, dict):
        assert got.keys() == want.keys()
        for key in want:
            assert_same(got[key], want[key])
    elif isinstance(want, dt.datetime):
        assert got == want
        assert (got.tzinfo is None) == (want.tzinfo is None)
    else:
        assert got == want


def raw_frame(obj: object) -> bytes:
    """A frame built with plain msgpack, for shapes the Codec would never emit."""
    body = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


VALUES = {
    "none": None,
    "true": True,
    "false": False,
    "int": -17,
    "int64_max": 2**63 - 1,
    "uint64_max": 2**64 - 1,
    "int64_min": -(2**63),
    "big_int": 2**64,
    "big_negative_int": -(2**63) - 1,
    "huge_int": 3**300,
    "float": 1.5,
    "float_nan_free_inf": float("inf"),
    "str": "counter",
    "unicode": "h\u00e9llo w\u00f6rld \u2603 \U0001f600 \u65e5\u672c",
    "empty_str": "",
    "bytes": b"\x00\xffbytes",
    "empty_bytes": b"",
    "list": [1, "a", b"b"],
    "tuple": ("incr", 1),
    "empty_tuple": (),
    "nested_tuple_in_list_in_dict": {"k": [("a", (1, (2, [3, (4,)]))), ()]},
    "set": {1, 2, 3},
    "set_of_tuples": {(1, 2), (3, "x")},
    "frozenset": frozenset({"a", "b"}),
    "frozenset_in_set": {frozenset({1}), frozenset()},
    "tuple_dict_keys": {("a", 1): "x", (("nested",), 2): {("k",): None}},
    "int_and_bytes_keys": {1: "one", b"k": "bytes key", "k": "str key"},
    "bytes_vs_str": [b"same", "same"],
    "naive_datetime": dt.datetime(2024, 2, 29, 23, 59, 58, 123456),
    "naive_datetime_fold": dt.datetime(2021, 11, 7, 1, 30, fold=1),
    "aware_datetime_utc": dt.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
    "datetime_in_tuple": (dt.datetime(1999, 12, 31), dt.datetime(2000, 1, 1, tzinfo=UTC)),
    "deep_tuples": ((((((((((((1,),),),),),),),),),),),),
    "envelope_like": ["call", 17, "counter", ("incr", 1)],
}


@pytest.mark.parametrize("value", list(VALUES.values()), ids=list(VALUES))
def test_values_round_trip(value: object) -> None:
    codec = Codec()
    assert_same(codec.decode(codec.encode(value)), value)


@pytest.mark.parametrize("value", list(VALUES.values()), ids=list(VALUES))
def test_values_round_trip_in_frames(value: object) -> None:
    codec = Codec()
    [env] = FrameDecoder(codec).feed(codec.frame(CALL, 1, "t", value))
    assert env == (CALL, 1, "t", value)
    assert_same(env.payload, value)


def test_aware_datetime_comes_back_as_same_instant_in_utc() -> None:
    codec = Codec()
    sent = dt.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=PLUS2)
    got = codec.decode(codec.encode(sent))
    assert got == sent
    assert got.utcoffset() == dt.timedelta(0)
    assert got.replace(tzinfo=None) == dt.datetime(2024, 1, 2, 1, 4, 5, 6)


def test_buffer_types_arrive_as_bytes() -> None:
    codec = Codec()
    assert_same(codec.decode(codec.encode([bytearray(b"ab"), memoryview(b"cd")])), [b"ab", b"cd"])


class Colour(enum.IntEnum):
    RED = 1


class Mode(enum.StrEnum):
    FAST = "fast"


class Legacy(str, enum.Enum):  # noqa: UP042 - the pre-StrEnum idiom is what we test
    OLD = "old"


class Plain(enum.Enum):
    A = 1


Point = collections.namedtuple("Point", "x y")


@pytest.mark.parametrize(
    ("sent", "want"),
    [
        (Colour.RED, 1),
        (Mode.FAST, "fast"),
        (Legacy.OLD, "old"),
        (Point(1, 2), (1, 2)),
        (collections.OrderedDict(a=(1,)), {"a": (1,)}),
        (collections.defaultdict(list, k=[1]), {"k": [1]}),
        ({Colour.RED: [Mode.FAST]}, {1: ["fast"]}),
    ],
    ids=[
        "intenum",
        "strenum",
        "str_mixin_enum",
        "namedtuple",
        "ordereddict",
        "defaultdict",
        "enum_keys",
    ],
)
@pytest.mark.parametrize("allow_pickle", [False, True], ids=["no_pickle", "pickle"])
def test_subclasses_of_native_types_degrade_to_the_base_type(
    sent: object, want: object, allow_pickle: bool
) -> None:
    codec = Codec(allow_pickle=allow_pickle)
    assert_same(codec.decode(codec.encode(sent)), want)


def test_object_without_pickle_is_a_helpful_type_error() -> None:
    class Opaque:
        pass

    with pytest.raises(TypeError) as info:
        Codec().encode({"k": [(1, Opaque())]})
    message = str(info.value)
    assert "Opaque" in message
    assert "allow_pickle=True" in message
    for native in (
        "None",
        "bool",
        "int",
        "float",
        "str",
        "bytes",
        "list",
        "dict",
        "tuple",
        "set",
        "frozenset",
        "datetime",
    ):
        assert native in message


def test_lambda_without_pickle_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="function"):
        Codec().frame(CAST, None, "x", lambda: 1)


def test_plain_enum_without_pickle_hints_at_value() -> None:
    with pytest.raises(TypeError, match=r"\.value"):
        Codec().encode(Plain.A)


def test_pickle_allowed_round_trips_a_lambda_and_objects() -> None:
    codec = Codec(allow_pickle=True)
    offset = 40
    payload = {"fn": lambda x: x + offset, "enum": Plain.A, "when": dt.date(2024, 1, 1)}
    [env] = FrameDecoder(codec).feed(codec.frame(CALL, 1, "t", payload))
    assert env.payload["fn"](2) == 42
    assert env.payload["enum"] is Plain.A
    assert env.payload["when"] == dt.date(2024, 1, 1)


def test_unpicklable_object_with_pickle_allowed_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="lock"):
        Codec(allow_pickle=True).encode(threading.Lock())


def test_pickle_ext_is_refused_when_not_allowed() -> None:
    body = Codec(allow_pickle=True).encode((lambda: 1,))
    with pytest.raises(ProtocolError, match="allow_pickle=False"):
        Codec().decode(body)


def test_pickle_ext_in_a_frame_is_refused_when_not_allowed() -> None:
    data = Codec(allow_pickle=True).frame(CALL, 1, "t", object())
    with pytest.raises(ProtocolError, match="frame 1: .*refusing to unpickle"):
        FrameDecoder(Codec()).feed(data)


@pytest.mark.parametrize("code", [0, 42, 127, -5])
def test_unknown_ext_code_is_a_protocol_error(code: int) -> None:
    # Built by hand: msgpack.ExtType refuses the negative (reserved) codes.
    body = b"\x94" + msgpack.packb("cast") + b"\xc0" + msgpack.packb("t")
    body += b"\xd5" + code.to_bytes(1, "big", signed=True) + b"zz"  # fixext 2
    data = struct.pack(">I", len(body)) + body
    with pytest.raises(ProtocolError, match=f"unknown msgpack ext type code {code}"):
        FrameDecoder(Codec()).feed(data)


def test_malformed_ext_payloads_are_protocol_errors() -> None:
    codec = Codec()
    for ext in (
        msgpack.ExtType(1, msgpack.packb("not an array")),  # tuple of a str
        msgpack.ExtType(2, msgpack.packb([[1], [2]])),  # set of unhashable lists
        msgpack.ExtType(5, b"\x00"),  # naive datetime of the wrong size
        msgpack.ExtType(1, b"\xc1"),  # never-used msgpack byte
    ):
        with pytest.raises(ProtocolError):
            codec.decode(msgpack.packb(ext))


def test_all_kinds_frame() -> None:
    codec = Codec()
    envs = [(kind, i, f"t{i}", [i]) for i, kind in enumerate(sorted(KINDS))]
    assert {CALL, CAST, REPLY, ERROR, SYSTEM} == KINDS
    assert FrameDecoder(codec).feed(codec.frames(envs)) == envs


def test_frame_rejects_bad_envelope_fields() -> None:
    codec = Codec()
    with pytest.raises(ValueError, match="kind"):
        codec.frame("shout", 1, "t", None)
    with pytest.raises(ValueError, match="kind"):
        codec.frame(["call"], 1, "t", None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ref"):
        codec.frame(CALL, "1", "t", None)
    with pytest.raises(ValueError, match="target"):
        codec.frame(CALL, 1, 7, None)


def test_frame_over_max_frame_is_refused_on_encode() -> None:
    codec = Codec(max_frame=1024)
    assert len(codec.frame(CAST, None, "t", b"x" * 1000)) <= 1024 + 4
    with pytest.raises(ProtocolError, match="over max_frame=1024"):
        codec.frame(CAST, None, "t", b"x" * 1024)


@pytest.mark.parametrize("bad", [0, -1, 2**32, 1.5])
def test_max_frame_must_fit_the_prefix(bad: object) -> None:
    with pytest.raises(ValueError, match="max_frame"):
        Codec(max_frame=bad)  # type: ignore[arg-type]


def test_default_max_frame_is_8_mib() -> None:
    assert DEFAULT_MAX_FRAME == Codec().max_frame == 8 * 1024 * 1024


def make_frames(codec: Codec, n: int) -> tuple[list[tuple], bytes]:
    envs = [(CALL, i, "counter", ("incr", i, "x" * (i % 7))) for i in range(n)]
    return envs, codec.frames(envs)


def test_partial_reads_byte_by_byte() -> None:
    codec = Codec()
    envs, data = make_frames(codec, 20)
    decoder = FrameDecoder(codec)
    got: list[Envelope] = []
    for i in range(len(data)):
        got += decoder.feed(data[i : i + 1])
    assert got == envs
    assert all(type(env) is Envelope for env in got)
    assert decoder.buffered == 0
    assert decoder.frames_decoded == 20


def test_split_length_prefix() -> None:
    codec = Codec()
    data = codec.frame(REPLY, 5, None, "ok")
    decoder = FrameDecoder(codec)
    assert decoder.feed(data[:2]) == []
    assert decoder.buffered == 2
    assert decoder.feed(data[2:3]) == []
    assert decoder.feed(data[3:]) == [(REPLY, 5, None, "ok")]


def test_many_frames_per_feed_with_a_trailing_partial() -> None:
    codec = Codec()
    envs, data = make_frames(codec, 500)
    tail = codec.frame(CAST, None, "tail", "end")
    decoder = FrameDecoder(codec)
    assert decoder.feed(data + tail[:5]) == envs
    assert decoder.buffered == 5
    assert decoder.feed(tail[5:]) == [(CAST, None, "tail", "end")]


def test_feed_accepts_memoryview_and_bytearray() -> None:
    codec = Codec()
    envs, data = make_frames(codec, 3)
    buf = bytearray(data)
    decoder = FrameDecoder(codec)
    got = decoder.feed(memoryview(buf)[:10]) + decoder.feed(bytearray(buf[10:]))
    buf[:] = b"\x00" * len(buf)  # the decoder must not keep views of the caller's buffer
    assert got == envs


def test_large_frame_in_small_chunks() -> None:
    codec = Codec()
    payload = bytes(range(256)) * 4096  # 1 MiB
    data = codec.frame(REPLY, 1, None, payload)
    decoder = FrameDecoder(codec)
    got: list[Envelope] = []
    for i in range(0, len(data), 4096):
        got += decoder.feed(data[i : i + 4096])
    assert got == [(REPLY, 1, None, payload)]


@pytest.mark.parametrize("size", [1025, 2**32 - 1])
def test_oversized_prefix_raises_before_buffering_the_body(size: int) -> None:
    decoder = FrameDecoder(Codec(max_frame=1024))
    with pytest.raises(ProtocolError, match=f"frame 1: length prefix of {size} bytes is over"):
        decoder.feed(struct.pack(">I", size))
    assert decoder.buffered == 0
    assert decoder.failed


def test_oversized_prefix_after_good_frames_names_the_frame() -> None:
    codec = Codec(max_frame=1024)
    envs, data = make_frames(codec, 2)
    decoder = FrameDecoder(codec)
    assert decoder.feed(data + struct.pack(">I", 5000)) == envs
    with pytest.raises(ProtocolError, match="frame 3: length prefix"):
        decoder.check()


def test_prefix_at_max_frame_is_accepted() -> None:
    codec = Codec(max_frame=64)
    payload = "x" * (40 + 64 - len(msgpack.packb(["cast", None, "t", "x" * 40])))
    body = msgpack.packb(["cast", None, "t", payload])
    assert len(body) == 64
    assert FrameDecoder(codec).feed(struct.pack(">I", 64) + body)[0].payload == payload
    assert len(codec.frame(CAST, None, "t", payload)) == 68


@pytest.mark.parametrize(
    "data",
    [
        struct.pack(">I", 1) + b"\xc1",  # the one byte msgpack never uses
        struct.pack(">I", 2) + b"\x92\x01",  # an array cut short
        struct.pack(">I", 3) + b"\x01\x02\x03",  # trailing data after a value
        struct.pack(">I", 3) + b"\xa2\xff\xfe",  # a str that is not utf-8
        struct.pack(">I", 5) + b"\xdd\xff\xff\xff\xff",  # an array claiming 4G items
    ],
    ids=["reserved_byte", "truncated", "extra_data", "bad_utf8", "huge_array_header"],
)
def test_garbage_bodies_are_protocol_errors(data: bytes) -> None:
    with pytest.raises(ProtocolError, match="frame 1: undecodable body"):
        FrameDecoder(Codec()).feed(data)


@pytest.mark.parametrize(
    "bad",
    [
        struct.pack(">I", 1) + b"\xc1",
        struct.pack(">I", 2) + b"\x92\x01",  # cut short: the next frame's bytes would complete it
        struct.pack(">I", 3) + b"\x01\x02\x03",
        struct.pack(">I", 5) + b"\xdd\x00\x00\x00\x09",  # 9 items, the next frame's bytes
    ],
    ids=["reserved_byte", "truncated", "extra_data", "array_past_its_frame"],
)
def test_garbage_between_good_frames_of_one_read(bad: bytes) -> None:
    # Frames of one read are decoded by a streaming unpacker: a malformed one must
    # not take the next frame's bytes as its own, nor leave the unpacker out of step.
    codec = Codec()
    envs, data = make_frames(codec, 2)
    decoder = FrameDecoder(codec)
    assert decoder.feed(data + bad + data) == envs
    with pytest.raises(ProtocolError, match="frame 3: undecodable body"):
        decoder.check()


def test_frames_split_anywhere_decode_in_step() -> None:
    codec = Codec()
    envs, data = make_frames(codec, 30)
    for step in (1, 3, 7, 50):
        decoder = FrameDecoder(codec)
        got = []
        for i in range(0, len(data), step):
            got += decoder.feed(data[i : i + step])
        assert got == envs and decoder.buffered == 0


def test_text_garbage_is_refused_by_its_prefix() -> None:
    with pytest.raises(ProtocolError, match="length prefix of 1195725856 bytes"):
        FrameDecoder(Codec()).feed(b"GET / HTTP/1.1\r\n\r\n")


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        (42, r"expected \[kind, ref, target, payload\], got int"),
        ({"kind": "call"}, r"got dict"),
        (["call", 1, "t"], r"got an array of 3 items"),
        (["call", 1, "t", None, "extra"], r"got an array of 5 items"),
        (["shout", 1, "t", None], r"unknown kind 'shout'"),
        ([["call"], 1, "t", None], r"unknown kind \['call'\]"),
        ([b"call", 1, "t", None], r"unknown kind b'call'"),
        (["call", "1", "t", None], r"ref must be an int or nil, got str"),
        (["call", 1.0, "t", None], r"ref must be an int or nil, got float"),
        (["call", True, "t", None], r"ref must be an int or nil, got bool"),
        (["call", 1, 7, None], r"target must be a str or nil, got int"),
    ],
)
def test_valid_msgpack_of_the_wrong_shape(obj: object, match: str) -> None:
    with pytest.raises(ProtocolError, match=f"frame 1: .*{match}"):
        FrameDecoder(Codec()).feed(raw_frame(obj))


def test_envelope_as_tuple_ext_is_the_wrong_shape() -> None:
    codec = Codec()
    body = codec.encode(("call", 1, "t", None))
    with pytest.raises(ProtocolError, match="got tuple"):
        FrameDecoder(codec).feed(struct.pack(">I", len(body)) + body)


def test_good_frames_before_a_bad_one_are_delivered_first() -> None:
    codec = Codec()
    envs, data = make_frames(codec, 2)
    decoder = FrameDecoder(codec)
    assert decoder.feed(data + raw_frame(42)) == envs
    assert decoder.failed
    with pytest.raises(ProtocolError, match="frame 3: expected .* got int"):
        decoder.feed(codec.frame(CAST, None, "t", 1))
    with pytest.raises(ProtocolError, match="frame 3"):  # stays failed
        decoder.check()


def test_eof() -> None:
    codec = Codec()
    decoder = FrameDecoder(codec)
    decoder.eof()  # nothing buffered: a clean end
    data = codec.frame(CAST, None, "t", "payload")
    decoder.feed(data[:-2])
    with pytest.raises(ProtocolError, match=f"mid-frame: frame 1 has {len(data) - 6} of its"):
        decoder.eof()


def test_codec_is_safe_to_share_between_threads() -> None:
    codec = Codec()
    errors: list[BaseException] = []

    def work(tid: int) -> None:
        try:
            for i in range(300):
                value = {(tid, i): [(tid, (i, frozenset({tid}))), {i}]}
                assert codec.decode(codec.encode(value)) == value
        except BaseException as exc:  # reported to the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not any(t.is_alive() for t in threads)
    assert errors == []


def test_encode_error_leaves_the_codec_usable() -> None:
    codec = Codec()
    with pytest.raises(TypeError):
        codec.encode([(1, (2, object()))])
    assert codec.decode(codec.encode([(1, (2, 3))])) == [(1, (2, 3))]


def test_large_encode_then_small_encode() -> None:
    codec = Codec()
    big = codec.encode(b"x" * (2 * 1024 * 1024))
    assert codec.decode(big) == b"x" * (2 * 1024 * 1024)
    assert codec.decode(codec.encode(("small",))) == ("small",)


def nest(levels: int, make: type = tuple) -> object:
    value: object = 1
    for _ in range(levels):
        value = make([value]) if make is not tuple else (value,)
    return value


@pytest.mark.parametrize("make", [tuple, frozenset])
def test_nesting_up_to_the_limit_round_trips(make: type) -> None:
    codec = Codec()
    value = nest(MAX_NESTING, make)
    assert codec.decode(codec.encode(value)) == value


def test_nesting_over_the_limit_is_refused_on_encode() -> None:
    with pytest.raises(ValueError, match="MAX_NESTING"):
        Codec().encode(nest(MAX_NESTING + 1))


@pytest.mark.parametrize("levels", [MAX_NESTING + 1, 5000])
def test_hostile_deep_nesting_is_a_protocol_error_not_a_crash(levels: int) -> None:
    # msgpack's C unpacker takes ~40 KiB of C stack per nested ext: a few hundred
    # levels used to segfault the receiving process.
    body = msgpack.packb(1)
    for _ in range(levels):
        body = msgpack.packb(msgpack.ExtType(1, b"\x91" + body))  # tuple of 1 item
    with pytest.raises(ProtocolError, match="MAX_NESTING"):
        Codec().decode(body)


def test_codec_pickles_by_its_settings() -> None:
    codec = pickle.loads(pickle.dumps(Codec(allow_pickle=True, max_frame=4096)))
    assert (codec.allow_pickle, codec.max_frame) == (True, 4096)
    assert codec.decode(codec.encode((1, {2}))) == (1, {2})


def test_error_messages_do_not_quote_megabytes() -> None:
    with pytest.raises(ProtocolError) as info:
        FrameDecoder(Codec()).feed(raw_frame(["x" * 100_000, 1, "t", None]))
    assert len(str(info.value)) < 200
