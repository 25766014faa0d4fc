"""The run directory's public names, where they have always been imported from.

The run's files are owned by :mod:`dyncal.artifacts.run` (opening a run) and the modules
beside it (:mod:`~dyncal.artifacts.rundir`, :mod:`~dyncal.artifacts.run_document`,
:mod:`~dyncal.artifacts.run_writer`, :mod:`~dyncal.artifacts.run_import`),
:mod:`dyncal.artifacts.costs` (the cost table), :mod:`dyncal.artifacts.lock` (the writers'
lock) and :mod:`dyncal.artifacts.atomic` (atomic writes); this module re-exports their
``__all__`` so that code written against ``dyncal.run`` keeps working.
"""

from __future__ import annotations

from dyncal.artifacts.atomic import *  # noqa: F403
from dyncal.artifacts.costs import *  # noqa: F403
from dyncal.artifacts.lock import *  # noqa: F403
from dyncal.artifacts.outputs import check_out  # noqa: F401
from dyncal.artifacts.run import *  # noqa: F403
from dyncal.artifacts.run_arrays import compute_fingerprint  # noqa: F401
from dyncal.artifacts.run_document import *  # noqa: F403
from dyncal.artifacts.run_import import *  # noqa: F403
from dyncal.artifacts.run_writer import *  # noqa: F403
from dyncal.artifacts.rundir import *  # noqa: F403
