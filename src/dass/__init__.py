"""dass: differentiable architecture search for sparse neural networks."""

from .errors import DassError

__version__ = "0.1.0"
__all__ = ["DassError", "__version__"]
