"""Typed artifacts: the documents dyncal writes and reads, each with one owner.

Every file dyncal writes besides the run directory itself (thresholds, verify results,
exported packages) has a module here that alone reads and writes it, validates it when
it is opened, and binds it to what it was made from (a run, a model, thresholds).
"""
