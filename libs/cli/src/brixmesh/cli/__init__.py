"""The ``brixmesh`` command line: run the embedded mesh, watch its events, see what runs."""
