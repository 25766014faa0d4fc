"""The run directory's public names, where they have always been imported from.

The run's files are owned by :mod:`dyncal.artifacts.run` (``run.json`` and the arrays),
:mod:`dyncal.artifacts.costs` (the cost table), :mod:`dyncal.artifacts.lock` (the writers'
lock) and :mod:`dyncal.artifacts.atomic` (atomic writes); this module re-exports their
``__all__`` so that code written against ``dyncal.run`` keeps working.
"""

from __future__ import annotations

from dyncal.artifacts.atomic import *  # noqa: F403
from dyncal.artifacts.costs import *  # noqa: F403
from dyncal.artifacts.lock import *  # noqa: F403
from dyncal.artifacts.run import *  # noqa: F403
