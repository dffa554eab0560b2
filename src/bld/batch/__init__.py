"""Batch editing: a manifest of rows in, each row's results and a ledger out, on Ray workers; resumable.

`run_manifest(path, outdir)` and `run_batch(rows, outdir)` (rows as dicts, for notebooks) are what
`bld batch` runs. See manifest (rows), ledger (the output folder), worker (one row's edit) and runner (Ray).
"""

from .runner import BatchSummary, run_batch, run_manifest

__all__ = ["BatchSummary", "run_batch", "run_manifest"]
