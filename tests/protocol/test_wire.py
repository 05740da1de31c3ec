import msgpack
import pytest

from animate4d.protocol import wire
from animate4d.protocol.options import JobOptions


def test_round_trip_and_plain_messagepack():
    data = wire.encode(wire.Submit(image=b"\x89PNG", image_name="a.png",
                                   options=JobOptions(prompt="a cat", frames=12)),
                       id="abc", job=None)
    env, body = wire.decode(data)
    assert (env.v, env.type, env.id) == (1, "submit", "abc")
    assert body.options.frames == 12 and body.image == b"\x89PNG"
    doc = msgpack.unpackb(data)  # any MessagePack library reads it
    assert doc["type"] == "submit" and doc["body"]["options"]["prompt"] == "a cat"


def test_a_message_written_by_another_library_is_understood():
    data = msgpack.packb({"v": 1, "type": "progress", "id": "x1", "job": "j" * 22,
                          "body": {"stage": "motion", "step": 3, "total": 24,
                                   "a_future_field": [1, 2]}})
    env, body = wire.decode(data)
    assert isinstance(body, wire.Progress) and body.step == 3 and env.job == "j" * 22


@pytest.mark.parametrize(
    "doc, code",
    [
        ({"v": 2, "type": "ping", "id": "1"}, "version"),
        ({"v": 1, "type": "teleport", "id": "1"}, "unknown_type"),
        ({"v": 1, "type": "submit", "id": "1", "body": {"image": 5}}, "bad_message"),
        ({"v": 1, "type": "submit", "id": "1", "body": {}}, "bad_message"),
        ({"v": 1, "type": "ping"}, "bad_message"),
        ({"v": 1, "type": "ping", "id": "x" * 500}, "bad_message"),
        ({"v": 1, "type": "submit", "id": "1",
          "body": {"image": b"", "options": {"frames": "many"}}}, "bad_message"),
        ({"v": 1, "type": "submit", "id": "1",
          "body": {"image": b"", "options": {"unknown_option": 1}}}, "bad_message"),
        ([1, 2, 3], "bad_message"),
    ],
)
def test_bad_messages_get_a_code(doc, code):
    with pytest.raises(wire.WireError) as err:
        wire.decode(msgpack.packb(doc))
    assert err.value.code == code


@pytest.mark.parametrize("data", [b"", b"\xc1", b"\xdd\xff\xff\xff\xff", b"\x91" * 100_000,
                                  b"\x81\xa1v" + b"\x91" * 100_000 + b"\x00"])
def test_garbage_is_a_wire_error(data):
    with pytest.raises(wire.WireError):
        wire.decode(data)


def test_oversized_messages_are_refused_before_decoding():
    with pytest.raises(wire.WireError) as err:
        wire.decode(b"\x00" * 11, max_bytes=10)
    assert err.value.code == "limit_exceeded"
