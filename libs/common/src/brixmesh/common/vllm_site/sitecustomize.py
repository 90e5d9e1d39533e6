"""Start-up hook of every Python process of a real vLLM engine (``vllm_cpu.engine_env`` puts this directory
on ``PYTHONPATH``). Standard library only: it runs in vLLM's venv, where brixmesh is not installed.

It makes ``brixmesh.common`` importable there, so ``--kv-transfer-config`` can name our KV connector
(``brixmesh.common.kv_tier_vllm``): the ``brixmesh`` namespace package is pointed at the directory this
package lives in, not at our venv, whose packages would shadow vLLM's own.

Linux lets a process execute AMX tile instructions only after it asked for them (``arch_prctl
ARCH_REQ_XCOMP_PERM, XTILEDATA``); without that, the first tile instruction kills it with SIGILL. vLLM 0.32's
CPU attention picks its AMX kernel on AMX CPUs (bf16 model, block size a multiple of 32) but never asks:
it works only if oneDNN asked earlier in the same process, which its brgemm does for a linear layer with
more than 4 rows. A worker whose first batch is at most 4 tokens (``"hi"``, ``[11, 12, 13]``) with the tiny
model's small, prepacked weights reaches the attention kernel first and dies ("VllmWorker-0 died
unexpectedly (exit code: -4)"). Asking at start-up makes it independent of what runs first. Where AMX is
absent (other CPUs, old kernels) the request fails and nothing changes.
"""

import ctypes
import importlib.machinery
import importlib.util
import os
import platform
import sys

_SYS_ARCH_PRCTL = 158  # x86-64 syscall number
_ARCH_REQ_XCOMP_PERM = 0x1023
_XFEATURE_XTILEDATA = 18


def _request_amx_permission() -> None:
    if sys.platform != "linux" or platform.machine() != "x86_64":
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return
    libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA)


_request_amx_permission()


def _expose_brixmesh_common() -> None:
    if "brixmesh" in sys.modules:
        return
    spec = importlib.machinery.ModuleSpec("brixmesh", None, is_package=True)
    common_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec.submodule_search_locations = [os.path.dirname(common_dir)]
    sys.modules["brixmesh"] = importlib.util.module_from_spec(spec)


_expose_brixmesh_common()
