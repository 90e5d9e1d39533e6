import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from brixmesh.common import ports
from brixmesh.common.ports import LOWEST_PORT, ephemeral_range, free_port, unassigned_pool


def test_free_ports_are_bindable_and_outside_the_kernels_own_range() -> None:
    low, high = ephemeral_range()
    picked = [free_port() for _ in range(50)]
    assert len(set(picked)) == len(picked)
    for port in picked:
        assert not low <= port <= high
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


@pytest.fixture
def held_port() -> Iterator[int]:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield held.getsockname()[1]


def test_a_held_port_is_never_offered(held_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every draw finds the port held, so the kernel picks one instead."""
    monkeypatch.setattr(ports, "unassigned_pool", lambda _range: range(held_port, held_port + 1))
    assert free_port() != held_port


def test_the_pool_lies_below_the_ephemeral_range_or_above_it() -> None:
    assert unassigned_pool((32768, 60999)) == range(LOWEST_PORT, 32768)
    assert unassigned_pool((11000, 60000)) == range(60001, 65536)
    assert unassigned_pool((11000, 64000)) is None


def test_an_unreadable_range_falls_back_to_linuxs_default(tmp_path: Path) -> None:
    assert ephemeral_range(tmp_path / "missing") == (32768, 60999)
    garbled = tmp_path / "range"
    garbled.write_text("lots\n")
    assert ephemeral_range(garbled) == (32768, 60999)
    garbled.write_text("20000\t40000\n")
    assert ephemeral_range(garbled) == (20000, 40000)
