"""The lease table on a fake clock: hold, renew, expire, pause while renewals cannot arrive."""

import math

from brixmesh.common.leases import LeaseTable


def test_a_key_expires_at_its_deadline_unless_renewed() -> None:
    leases: LeaseTable[str] = LeaseTable()
    leases.hold("a", now=0.0, lease_s=10.0)
    leases.hold("b", now=0.0, lease_s=10.0)
    assert leases.expire(9.9) == []
    leases.renew("b", now=5.0, default_lease_s=99.0)  # its own lease, not the default
    assert leases.deadline("b") == 15.0
    assert leases.expire(10.0) == ["a"]
    assert "a" not in leases and "b" in leases
    assert leases.expire(14.9) == [] and leases.expire(15.0) == ["b"]
    assert len(leases) == 0


def test_renewing_an_unknown_key_holds_it_for_the_default() -> None:
    leases: LeaseTable[str] = LeaseTable()
    leases.renew("new", now=2.0, default_lease_s=3.0)
    assert leases.deadline("new") == 5.0


def test_a_zero_lease_never_expires() -> None:
    leases: LeaseTable[str] = LeaseTable()
    leases.hold("static", now=0.0, lease_s=0.0)
    assert leases.expire(1e12) == [] and "static" in leases
    assert leases.next_deadline() == math.inf


def test_released_keys_do_not_expire_later() -> None:
    leases: LeaseTable[str] = LeaseTable()
    leases.hold("a", now=0.0, lease_s=1.0)
    leases.release("a")
    leases.release("never-held")
    assert leases.expire(5.0) == []


def test_renew_all_restarts_every_lease_from_now() -> None:
    leases: LeaseTable[str] = LeaseTable()
    leases.hold("short", now=0.0, lease_s=2.0)
    leases.hold("long", now=0.0, lease_s=6.0)
    leases.hold("static", now=0.0, lease_s=0.0)
    leases.renew_all(now=100.0)  # e.g. the bus was down from 0 to 100: nobody could renew
    assert leases.expire(101.9) == []
    assert leases.next_deadline() == 102.0
    assert leases.expire(102.0) == ["short"]
    assert leases.expire(106.0) == ["long"]
    assert list(leases) == ["static"]
