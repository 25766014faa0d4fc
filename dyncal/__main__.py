"""``python -m dyncal`` (also ``torchrun -m dyncal collect ...``)."""

from dyncal.cli import main

main()
