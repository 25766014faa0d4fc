"""dyncal: measure, calibrate and verify early-exit (multi-exit) classifiers.

Example:
    >>> import dyncal
    >>> sorted(n for n in dyncal.__all__ if n.startswith("load"))
    ['load_run']
"""

from dyncal.errors import DyncalError
from dyncal.run import CostTable, LatencyProfile, Provenance, Run, import_arrays, import_npz, load_run

__version__ = "0.1.0"

__all__ = [
    "CostTable",
    "DyncalError",
    "LatencyProfile",
    "Provenance",
    "Run",
    "import_arrays",
    "import_npz",
    "load_run",
    "__version__",
]
