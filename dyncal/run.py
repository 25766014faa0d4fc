"""The run directory's public names, kept where they have always been imported from.

The run's files are owned by :mod:`dyncal.artifacts.run` (``run.json`` and the arrays),
:mod:`dyncal.artifacts.costs` (the cost table), :mod:`dyncal.artifacts.lock` (the writers'
lock) and :mod:`dyncal.artifacts.atomic` (atomic writes); this module re-exports them.
"""

from __future__ import annotations

from dyncal.artifacts.atomic import atomic_write_bytes, atomic_write_text
from dyncal.artifacts.costs import (
    MODEL_ID_KEYS,
    CostTable,
    LatencyKey,
    LatencyProfile,
    UnsupportedOp,
    latency_key,
    other_model_latency,
)
from dyncal.artifacts.lock import LOCK_SUFFIX, RunLock, lock_path
from dyncal.artifacts.run import (
    INDICES_FILE,
    LABELS_FILE,
    LOGITS_FILE,
    NPZ_READ_ERRORS,
    PARTIAL_SUFFIX,
    RUN_JSON,
    SCHEMA_VERSION,
    Provenance,
    Run,
    RunDocument,
    RunWriter,
    StoredCosts,
    check_out,
    compute_fingerprint,
    import_arrays,
    import_npz,
    is_run_dir,
    library_versions,
    load_run,
    publish_dir,
    run_dir_holding,
    save_costs,
    store_costs,
)

__all__ = [
    "SCHEMA_VERSION",
    "RUN_JSON",
    "LOGITS_FILE",
    "LABELS_FILE",
    "INDICES_FILE",
    "PARTIAL_SUFFIX",
    "LOCK_SUFFIX",
    "NPZ_READ_ERRORS",
    "MODEL_ID_KEYS",
    "Provenance",
    "RunDocument",
    "LatencyProfile",
    "UnsupportedOp",
    "CostTable",
    "Run",
    "RunWriter",
    "load_run",
    "import_arrays",
    "import_npz",
    "save_costs",
    "store_costs",
    "StoredCosts",
    "other_model_latency",
    "RunLock",
    "lock_path",
    "atomic_write_text",
    "atomic_write_bytes",
    "latency_key",
    "LatencyKey",
    "compute_fingerprint",
    "check_out",
    "is_run_dir",
    "run_dir_holding",
    "publish_dir",
    "library_versions",
]
