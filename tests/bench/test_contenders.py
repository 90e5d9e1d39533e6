"""Contender names: a brixmesh contender's router settings travel with its strategy."""

from __future__ import annotations

import pytest
from brixbench.contenders.brixmesh import BrixmeshRouter, MeshProvider
from brixbench.contenders.catalogue import UnknownContender, resolve


def test_brixmesh_settings_follow_the_strategy_and_name_the_contender() -> None:
    name = "brixmesh:kv-aware:3,least-request:2;BRIXMESH_LEAD_GAIN=0;BRIXMESH_KV_TURN_ROUTING=true"
    router = resolve(name, MeshProvider())
    assert isinstance(router, BrixmeshRouter)
    assert router.strategy == "kv-aware:3,least-request:2"
    assert router.settings == {"BRIXMESH_LEAD_GAIN": "0", "BRIXMESH_KV_TURN_ROUTING": "true"}
    assert router.name == (
        "brixmesh kv-aware:3,least-request:2 BRIXMESH_LEAD_GAIN=0 BRIXMESH_KV_TURN_ROUTING=true"
    )
    plain = resolve("brixmesh:random", MeshProvider())
    assert isinstance(plain, BrixmeshRouter) and plain.settings == {} and plain.name == "brixmesh random"


@pytest.mark.parametrize(
    "name", ["brixmesh:random;LEAD=1", "brixmesh:random;BRIXMESH_LEAD_GAIN", "brixmesh:;BRIXMESH_A=1"]
)
def test_a_malformed_brixmesh_contender_is_refused(name: str) -> None:
    with pytest.raises(UnknownContender, match="brixmesh"):
        resolve(name, MeshProvider())
