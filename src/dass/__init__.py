"""dass: differentiable architecture search for sparse neural networks."""

import os

# OpenMP threads that spin while waiting take cores from any other process on the machine: two dass jobs on
# two cores slowed each other down 4-90x with libgomp's default spin (300,000 iterations). Sleeping at once
# (OMP_WAIT_POLICY=PASSIVE) fixes that but costs a search alone ~1.6x (thousands of small parallel regions per
# step, each waking its threads). A short spin (about a microsecond) before sleeping keeps the speed alone and
# brings two jobs on two cores to ~2x each: bench/concurrency.py, docs/performance.md. Set here, before PyTorch
# or dass's kernels start their OpenMP runtime, unless the user chose a policy.
DEFAULT_OPENMP_ENV = {"GOMP_SPINCOUNT": "1000"}
if not any(key in os.environ for key in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")):
    os.environ.update(DEFAULT_OPENMP_ENV)

from .errors import DassError  # noqa: E402

__version__ = "0.1.0"
__all__ = ["DassError", "__version__"]
