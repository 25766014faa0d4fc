"""The ``dyncal`` command line: a thin face over the library.

Each verb parses options, calls the library, and prints. Library errors
(:class:`dyncal.errors.DyncalError`) become one line on stderr and exit status 1;
anything else is a bug and keeps its traceback.
"""

from dyncal.cli import decide, measure, rollout
from dyncal.cli.app import app

# listed by `dyncal --help` in this order, the pipeline's
for _verb in (
    measure.collect,
    measure.import_,
    measure.info,
    measure.profile,
    decide.solve,
    decide.frontier,
    measure.verify,
    measure.export_,
    measure.demo,
    decide.report,
    decide.plot,
    rollout.evaluate,
    rollout.monitor,
):
    app.command(_verb.__name__.rstrip("_"))(_verb)


def main() -> None:
    """Console-script entry point."""
    app()
