"""Run a batch of edits on Ray: one actor per worker holds the model, the driver hands out rows and writes.

Ray Core actors rather than Ray Data: a row is one edit that takes seconds to minutes, not a record in a
stream, and the job needs per-row control that Ray Data leaves to its engine: each row's results written
exactly once by one writer (the driver, so a resumed job can trust its ledger), a row whose worker died
retried on another attempt while a row that failed on its input is recorded and never retried, and a model
loaded once per worker (an actor) and reused for every row. Ray brings the rest: the local cluster started
on the spot or a cluster joined by address, GPUs per worker (fractional ones too), restarting a dead worker.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..image_io import InputError
from .ledger import Ledger, output_names
from .manifest import BatchRow, read_manifest, resolve_rows
from .worker import RowEditor, RowTask, WorkerConfig

MAX_ATTEMPTS = 3  # tries of a row whose worker dies under it (killed, out of memory, machine lost)
TASKS_PER_WORKER = 2  # rows queued on each worker, so that it never waits for the driver
CPUS_PER_CPU_WORKER = 4  # default on CPU machines: one worker per this many cores


@dataclass
class BatchSummary:
    rows: int  # rows in the manifest
    ok: int  # rows with results (done before this run included)
    failed: int
    done_before: int  # rows found done (or their files found written) and not edited again
    edited: int  # rows edited by this run
    workers: int
    seconds: float
    results: str  # the ledger, results.jsonl
    errors: list[dict] = field(default_factory=list)  # {'id', 'line', 'error'} of each failed row

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def run_manifest(manifest: str | Path, output: str | Path, **options) -> BatchSummary:
    """`run_batch` over a manifest file (.jsonl or .csv); its paths are relative to its folder."""
    manifest = Path(manifest)
    return _run(read_manifest(manifest), output, base_dir=manifest.parent, **options)


def run_batch(rows: Iterable[Mapping[str, Any]], output: str | Path, *, base_dir: str | Path = ".",
              **options) -> BatchSummary:
    """Edit every row (a dict: image, mask, prompt, optional id, any EditParams field) into `output`.

    Options: model (folder, Hub id; default the bundled model), defaults (EditParams values for every row,
    under each row's own), address (a Ray cluster: 'auto', 'ray://host:port'; default a local Ray on this
    machine), workers, gpus_per_worker, device, dtype, cpu_offload, clip_model, max_pixels, overwrite,
    progress.
    Rows already done in `output` are skipped; see bld.batch.ledger.
    """
    return _run(((k + 1, dict(row)) for k, row in enumerate(rows)), output, base_dir=base_dir, **options)


def _run(rows, output, *, base_dir, model: str | None = None, defaults: Mapping[str, Any] | None = None,
         address: str | None = None, workers: int | None = None, gpus_per_worker: float | None = None,
         device: str = "auto", dtype: str = "auto", clip_model: str | None = None, max_pixels: int | None = None,
         overwrite: bool = False, progress: bool = True, verbose: bool = False,
         cpu_offload: bool = False) -> BatchSummary:
    from ..model_defaults import default_model, model_edit_defaults

    start = time.perf_counter()
    model = model or default_model()
    resolved = resolve_rows(rows, base_dir, {**model_edit_defaults(model), **(defaults or {})})
    ledger = Ledger.open(output)
    tasks, done_before = plan_rows(resolved, ledger, model, overwrite)
    count = 0
    if tasks:
        config = WorkerConfig(model, device, dtype, clip_model, max_pixels, cpu_offload=cpu_offload)
        count = run_on_ray(tasks, ledger, config, address=address, workers=workers,
                           gpus_per_worker=gpus_per_worker, progress=progress, verbose=verbose)
    ledger.compact([row.id for row in resolved])
    records = [ledger.records.get(row.id, {}) for row in resolved]
    errors = [{"id": row.id, "line": row.line, "error": r.get("error")} for row, r in zip(resolved, records)
              if r.get("status") != "ok"]
    return BatchSummary(rows=len(resolved), ok=len(resolved) - len(errors), failed=len(errors),
                        done_before=done_before, edited=len(tasks), workers=count,
                        seconds=round(time.perf_counter() - start, 3), results=str(ledger.path), errors=errors)


def plan_rows(rows: list[BatchRow], ledger: Ledger, model: str, overwrite: bool) -> tuple[list[RowTask], int]:
    """The rows to edit now, and how many were already done. Rows that cannot run are recorded as errors
    (a record that says the same again is not rewritten); rows whose files a killed run left are recorded."""
    tasks, done_before = [], 0
    for row in rows:
        if not row.ok:
            record_error(ledger, row.id, row.line, row.error)
            continue
        fingerprint = row.fingerprint(model)
        count = row.params.num_images
        if ledger.done(row.id, fingerprint):  # the same work, done: even --overwrite would remake it identically
            done_before += 1
            continue
        conflict = ledger.conflict(row.id, fingerprint, count, overwrite)
        if conflict:
            record_error(ledger, row.id, row.line, conflict)
            continue
        recovered = ledger.recovered(row.id, fingerprint, count)
        if recovered is not None:
            ledger.append({**recovered, "line": row.line})
            done_before += 1
            continue
        tasks.append(RowTask(row.id, row.line, str(row.image), str(row.mask), row.params.to_dict(), fingerprint,
                             tuple(str(m) for m in row.region_masks)))
    return tasks, done_before


def record_error(ledger: Ledger, row_id: str, line: int, error: str) -> None:
    record = {"id": row_id, "line": line, "status": "error", "error": error}
    if ledger.records.get(row_id) != record:
        ledger.append(record)


def run_on_ray(tasks: list[RowTask], ledger: Ledger, config: WorkerConfig, *, address: str | None,
               workers: int | None, gpus_per_worker: float | None, progress: bool, verbose: bool) -> int:
    """Edit `tasks` on Ray workers, writing each finished row into the ledger; the number of workers."""
    try:
        import ray
    except ImportError:
        raise InputError("batch editing runs on Ray, which is not installed: pip install 'bld[batch]' "
                         "(or pip install ray)") from None

    started_here = not ray.is_initialized()
    if started_here:
        connect(address, verbose)
    try:
        actors = start_workers(ray, config, len(tasks), workers, gpus_per_worker)
        drive(ray, actors, tasks, ledger, progress)
        return len(actors)
    finally:
        if started_here:
            ray.shutdown()


def connect(address: str | None, verbose: bool) -> None:
    """Join the cluster at `address`, or start a local Ray on this machine (all its cores)."""
    import ray

    quiet = {} if verbose else {"logging_level": logging.ERROR, "log_to_driver": False}
    try:
        if address:
            ray.init(address=address, **quiet)
        else:
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address!r}" if address else "a local Ray"
        raise InputError(f"cannot start {where}: {first_line(str(exc))}") from None


def worker_shape(resources: Mapping[str, float], device: str, rows: int, workers: int | None,
                 gpus_per_worker: float | None) -> tuple[int, float, float]:
    """(workers, CPUs each, GPUs each): one worker per GPU (or per `gpus_per_worker` of one) when the cluster
    has GPUs and the device allows them; else one per CPUS_PER_CPU_WORKER cores, each with its share of the
    cores as torch threads. Never more workers than rows."""
    gpus, cpus = resources.get("GPU", 0.0), max(1.0, resources.get("CPU", 1.0))
    if gpus and not device.startswith(("cpu", "mps")):
        each = gpus_per_worker or 1.0
        count = workers or max(1, int(gpus / each + 1e-9))
        return max(1, min(count, rows)), 1.0, each
    count = max(1, min(workers or max(1, int(cpus) // CPUS_PER_CPU_WORKER), rows))
    return count, max(1.0, float(int(cpus) // count)), 0.0


def start_workers(ray, config: WorkerConfig, rows: int, workers: int | None, gpus_per_worker: float | None):
    """The worker actors, each with its model loaded; a model that cannot load ends the job in one line."""
    count, cpus, gpus = worker_shape(ray.cluster_resources(), config.device, rows, workers, gpus_per_worker)
    threads = int(cpus) if not gpus else None
    remote = ray.remote(RowEditor).options(num_cpus=cpus, num_gpus=gpus, max_restarts=-1,
                                            max_task_retries=MAX_ATTEMPTS - 1)
    worker_config = WorkerConfig(**{**config.__dict__, "threads": threads})
    actors = [remote.remote(worker_config) for _ in range(count)]
    try:
        ray.get([actor.ready.remote() for actor in actors])
    except ray.exceptions.RayError as exc:
        raise InputError(f"the workers could not load the model: {cause_line(exc)}") from None
    return actors


def drive(ray, actors, tasks: list[RowTask], ledger: Ledger, progress: bool) -> None:
    """Hand rows to the workers, TASKS_PER_WORKER at a time each; write each result as it arrives.
    A row whose worker dies under it is run again by Ray once the worker has restarted (MAX_ATTEMPTS in
    all); one that fails on its own is recorded as failed and never retried."""
    from tqdm.auto import tqdm

    from ..image_io import write_png_atomic

    pending = deque(tasks)
    running: dict[Any, tuple[RowTask, Any]] = {}

    def submit(actor) -> None:
        if pending:
            task = pending.popleft()
            running[actor.edit.remote(task)] = (task, actor)

    for actor in actors:
        for _ in range(TASKS_PER_WORKER):
            submit(actor)
    failed = 0
    with tqdm(total=len(tasks), unit="row", disable=not progress, dynamic_ncols=True) as bar:
        while running:
            [ref], _ = ray.wait(list(running), num_returns=1)
            task, actor = running.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:  # an unexpected error inside the edit
                result = {"id": task.id, "status": "error", "error": cause_line(exc)}
            except ray.exceptions.RayError as exc:  # the worker died under the row MAX_ATTEMPTS times
                result = {"id": task.id, "status": "error",
                          "error": f"the worker died {MAX_ATTEMPTS} times while editing this row ({cause_line(exc)})"}
            if result["status"] == "ok":
                for name, data in zip(output_names(task.id, len(result["pngs"])), result.pop("pngs")):
                    write_png_atomic(data, ledger.folder / name, overwrite=True)  # conflicts were refused before
            else:
                failed += 1
            ledger.append({**result, "line": task.line})
            bar.update()
            bar.set_postfix(failed=failed, refresh=False)
            submit(actor)


def first_line(text: str) -> str:
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", text).splitlines() if line.strip()]
    return lines[0] if lines else text


def cause_line(exc: Exception) -> str:
    """The one line that says what went wrong in a worker: the original exception's message."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and not type(cause).__module__.startswith("ray"):
        return " ".join(f"{type(cause).__name__}: {cause}".split()) if not isinstance(cause, ValueError) \
            else " ".join(str(cause).split())
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).splitlines() if line.strip()]
    last = lines[-1] if lines else type(exc).__name__
    return re.sub(r"^[\w.]*(InputError|ValueError): ", "", last)
