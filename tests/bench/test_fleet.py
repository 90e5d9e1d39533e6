import socket
from pathlib import Path

from brixbench.fleet import Fleet, FleetSpec, consecutive_free_ports, log_tail


def test_consecutive_free_ports_are_all_bindable():
    base = consecutive_free_ports(8)
    sockets = []
    try:
        for port in range(base, base + 8):
            s = socket.socket()
            sockets.append(s)
            s.bind(("127.0.0.1", port))
    finally:
        for s in sockets:
            s.close()


def test_max_model_len_is_capped_by_the_kv_cache():
    assert Fleet(FleetSpec(num_gpu_blocks=65, block_size=16), Path(".")).max_model_len == 1024
    assert Fleet(FleetSpec(num_gpu_blocks=None, max_model_len=4096), Path(".")).max_model_len == 4096


def test_log_tail_is_one_line(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("starting\n\nboom: bad flag\n\n")
    assert log_tail(log) == f"boom: bad flag (log: {log})"
    assert log_tail(tmp_path / "missing.log").startswith("no log at")
