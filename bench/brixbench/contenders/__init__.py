"""Contenders: anything that decides which engine serves a request.

Each has a ``name``, says why it cannot run here (``unavailable``), and on ``start`` returns a client
:class:`~brixbench.client.Target`; ``pid`` is its router process (for CPU accounting), None when it routes
inside the client. Add one by writing a class with that shape and listing it in :func:`catalogue`.
"""

from brixbench.contenders.base import Contender, RouterProcess
from brixbench.contenders.catalogue import (
    DEFAULT_CONTENDERS,
    QUICK_CONTENDERS,
    VLLM_CONTENDERS,
    UnknownContender,
    catalogue,
    resolve,
)

__all__ = ["DEFAULT_CONTENDERS", "QUICK_CONTENDERS", "VLLM_CONTENDERS", "Contender", "RouterProcess",
           "UnknownContender", "catalogue", "resolve"]
