"""Deployment defaults, in one place (NumPy- and torch-free, so the packed runtime can import it)."""

DEFAULT_THREADS = 2   # the deployment target: a 2-core edge CPU, as the paper's latency measurements
