"""The output folder of a batch job: result PNGs named after each row's id and `results.jsonl`, the ledger.

Only the driver writes here. A row's PNGs are written atomically first, then its line is appended to the
ledger and fsynced: a row is done when its line says `ok` with the same fingerprint and its files exist.
A driver killed between the two leaves PNGs without a line; they carry the row's fingerprint in their
metadata (`bld_batch`), so the next run takes them as done instead of editing the row again. Temporary
files of an interrupted write are removed when the job starts again.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..image_io import TEMP_SUFFIX, InputError

LEDGER = "results.jsonl"
BATCH_KEY = "bld_batch"  # the PNG text chunk that ties a result file to its row


def output_names(row_id: str, count: int) -> list[str]:
    """The result files of a row: ID.png for one result, ID-1.png ... ID-N.png (best first) for several."""
    return [f"{row_id}.png"] if count == 1 else [f"{row_id}-{k + 1}.png" for k in range(count)]


@dataclass
class Ledger:
    """results.jsonl of a job folder: the latest record of each row id."""

    folder: Path
    records: dict[str, dict[str, Any]]
    changed: bool = False  # a line was appended since the job started

    @classmethod
    def open(cls, folder: str | Path) -> Ledger:
        """The folder's ledger (created empty), after removing temporary files left by a killed run."""
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise InputError(f"output {str(folder)!r} is a file: give a folder for the results")
        if not folder.parent.is_dir():
            raise InputError(f"folder {str(folder.parent)!r} does not exist: create it or choose another -o")
        folder.mkdir(exist_ok=True)
        (folder / f".{LEDGER}.tmp").unlink(missing_ok=True)
        for stray in folder.glob(f".*{TEMP_SUFFIX}"):
            stray.unlink(missing_ok=True)
        records: dict[str, dict[str, Any]] = {}
        path = folder / LEDGER
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # the last line of a run killed while writing it
                    continue
                if isinstance(record, dict) and "id" in record:
                    records[str(record["id"])] = record
        return cls(folder, records)

    @property
    def path(self) -> Path:
        return self.folder / LEDGER

    def done(self, row_id: str, fingerprint: str) -> bool:
        record = self.records.get(row_id)
        return (record is not None and record.get("status") == "ok" and record.get("fingerprint") == fingerprint
                and all((self.folder / o["path"]).is_file() for o in record.get("outputs", [])))

    def conflict(self, row_id: str, fingerprint: str, count: int, overwrite: bool) -> str | None:
        """Why the row may not be (re)made here without --overwrite: its results were made with other
        inputs or parameters, or its file names hold files that are not this row's. None when it may."""
        if overwrite:
            return None
        record = self.records.get(row_id)
        if record is not None and record.get("status") == "ok" and record.get("fingerprint") != fingerprint:
            return (f"row {row_id!r} has results made with other inputs or parameters: pass --overwrite to remake "
                    "them, or give the row another id")
        for name in output_names(row_id, count):
            tag = self.file_tag(name)
            if tag is not None and tag.get("fingerprint") != fingerprint:
                return f"{str(self.folder / name)!r} already exists and is not this row's result: pass --overwrite"
        return None

    def file_tag(self, name: str) -> dict | None:
        """The bld_batch chunk of an existing result file ({} for a file without one), None when absent."""
        from ..image_io import read_png_metadata

        path = self.folder / name
        if not path.exists():
            return None
        try:
            return json.loads(read_png_metadata(path).get(BATCH_KEY, "{}"))
        except (InputError, json.JSONDecodeError):
            return {}

    def recovered(self, row_id: str, fingerprint: str, count: int) -> dict[str, Any] | None:
        """The record of a row whose PNGs were all written by a run killed before it wrote the row's line."""
        names = output_names(row_id, count)
        tags = [self.file_tag(name) for name in names]
        if not all(tag is not None and tag.get("fingerprint") == fingerprint for tag in tags):
            return None
        return {"id": row_id, "status": "ok", "fingerprint": fingerprint, "recovered": True,
                "outputs": [{"path": name, **tag.get("output", {})} for name, tag in zip(names, tags)],
                "worker": tags[0].get("worker")}

    def append(self, record: dict[str, Any]) -> None:
        """Add a row's record durably (one line, flushed and fsynced)."""
        with open(self.path, "a+b") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() and not self._ends_in_newline(f):  # a line cut short by a kill: start a fresh one
                f.write(b"\n")
            f.write((json.dumps(record, sort_keys=True) + "\n").encode())
            f.flush()
            os.fsync(f.fileno())
        self.records[str(record["id"])] = record
        self.changed = True

    @staticmethod
    def _ends_in_newline(f) -> bool:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(0, os.SEEK_END)
        return last == b"\n"

    def compact(self, order: list[str]) -> None:
        """Rewrite the ledger atomically with one line per row, in manifest order (rows no longer in the
        manifest last); only when this run added lines, so a finished job's rerun rewrites nothing."""
        if not self.changed:
            return
        ids = [i for i in order if i in self.records] + [i for i in self.records if i not in set(order)]
        tmp = self.path.with_name(f".{LEDGER}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for row_id in ids:
                f.write(json.dumps(self.records[row_id], sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
