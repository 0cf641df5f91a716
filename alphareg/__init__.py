"""alphareg: alpha-guided regularisation research framework (grokking, anti-grokking, HTSR)."""
from .config import ConfigError, RunConfig

__version__ = "0.1.0"
__all__ = ["ConfigError", "RunConfig", "__version__"]
