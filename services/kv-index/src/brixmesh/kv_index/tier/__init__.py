"""The KV tier server (``brixmesh-kv-tier``): KV blocks in CPU DRAM slabs, optionally Redis behind them.
The client and wire protocol are :mod:`brixmesh.common.kv_tier`."""
