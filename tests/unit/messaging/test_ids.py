"""Tests for iris_mesh.messaging._ids: layout, the monotonic rule, and a clock that stalls or steps back."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iris_mesh.messaging._ids import MessageIdGenerator, id_from_hex, id_time_ms, id_to_hex

T0 = 1_718_000_000_000
MAX_MS = (1 << 48) - 1


def fixed(random_part: bytes) -> Callable[[int], bytes]:
    def random_bytes(n: int) -> bytes:
        assert n == 10
        return random_part

    return random_bytes


def counting(calls: list[int]) -> Callable[[int], bytes]:
    def random_bytes(n: int) -> bytes:
        calls.append(n)
        return os.urandom(n)

    return random_bytes


def test_layout_is_48_bit_ms_then_80_random_bits() -> None:
    msg_id = MessageIdGenerator(fixed(bytes(range(10)))).next(T0)
    assert len(msg_id) == 16
    assert msg_id[:6] == T0.to_bytes(6, "big")
    assert msg_id[6:] == bytes(range(10))
    assert id_time_ms(msg_id) == T0


def test_same_millisecond_increments_the_random_part_without_drawing() -> None:
    calls: list[int] = []
    gen = MessageIdGenerator(counting(calls))
    first, second, third = gen.next(T0), gen.next(T0), gen.next(T0)
    assert calls == [10]
    assert int.from_bytes(second, "big") == int.from_bytes(first, "big") + 1
    assert int.from_bytes(third, "big") == int.from_bytes(first, "big") + 2


def test_a_new_millisecond_draws_fresh_random_bits() -> None:
    calls: list[int] = []
    gen = MessageIdGenerator(counting(calls))
    gen.next(T0)
    later = gen.next(T0 + 1)
    assert calls == [10, 10]
    assert id_time_ms(later) == T0 + 1


def test_a_clock_stepping_back_keeps_the_last_timestamp_and_increments() -> None:
    gen = MessageIdGenerator(fixed(b"\x00" * 9 + b"\x05"))
    first = gen.next(T0)
    second = gen.next(T0 - 5000)
    assert second > first
    assert id_time_ms(second) == T0
    assert second[6:] == b"\x00" * 9 + b"\x06"


def test_overflow_of_the_random_part_moves_to_the_next_millisecond() -> None:
    draws = iter([b"\xff" * 10, b"\x00" * 10])
    gen = MessageIdGenerator(lambda n: next(draws))
    first = gen.next(T0)
    second = gen.next(T0)
    assert second > first
    assert id_time_ms(second) == T0 + 1
    assert second[6:] == b"\x00" * 10


def test_the_last_timestamp_cannot_overflow_silently() -> None:
    gen = MessageIdGenerator(fixed(b"\xff" * 10))
    gen.next(MAX_MS)
    with pytest.raises(OverflowError):
        gen.next(MAX_MS)


@pytest.mark.parametrize("wall_ms", [-1, 1 << 48, 1.5, True, "0", None])
def test_bad_wall_clock_values_are_refused(wall_ms: object) -> None:
    with pytest.raises(ValueError):
        MessageIdGenerator(os.urandom).next(wall_ms)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [b"", b"\x00" * 9, b"\x00" * 11, "0123456789"])
def test_a_broken_random_source_is_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        MessageIdGenerator(lambda n: bad).next(T0)  # type: ignore[arg-type,return-value]


@given(
    start=st.integers(min_value=0, max_value=1 << 47),
    steps=st.lists(st.integers(min_value=-10_000, max_value=3), min_size=1, max_size=300),
    random_part=st.binary(min_size=10, max_size=10),
)
def test_ids_from_one_generator_strictly_increase_whatever_the_clock_does(
    start: int, steps: list[int], random_part: bytes
) -> None:
    gen = MessageIdGenerator(fixed(random_part))
    wall_ms = start
    previous = gen.next(wall_ms)
    highest_wall = wall_ms
    for step in steps:
        wall_ms = max(0, wall_ms + step)
        highest_wall = max(highest_wall, wall_ms)
        msg_id = gen.next(wall_ms)
        assert msg_id > previous
        # The stamp never runs behind the clock's high-water mark (it may run ahead after an overflow).
        assert id_time_ms(msg_id) >= highest_wall
        previous = msg_id


def test_hex_helpers_round_trip() -> None:
    msg_id = MessageIdGenerator(os.urandom).next(T0)
    text = id_to_hex(msg_id)
    assert len(text) == 32 and text == text.lower()
    assert id_from_hex(text) == msg_id
    assert id_from_hex(text.upper()) == msg_id


@pytest.mark.parametrize("text", ["", "00" * 15, "00" * 17, "zz" * 16, "00 " * 10 + "00", b"00" * 16])
def test_id_from_hex_refuses_anything_but_32_hex_digits(text: object) -> None:
    with pytest.raises(ValueError):
        id_from_hex(text)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [b"", b"\x00" * 15, b"\x00" * 17, "00" * 16])
def test_helpers_refuse_what_is_not_an_id(bad: object) -> None:
    with pytest.raises(ValueError):
        id_time_ms(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        id_to_hex(bad)  # type: ignore[arg-type]
