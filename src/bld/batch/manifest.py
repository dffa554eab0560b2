"""A batch manifest: one edit per row, read and checked before any model loads.

A row is a JSON object (JSON Lines) or a CSV record with `image`, `mask`, `prompt`, an optional `id` and any
EditParams field; in JSON Lines `regions` lists further regions, each {"mask", "prompt", and optionally
"negative_prompt" and "strength"}. Paths are relative to the manifest's folder. Every row becomes a
`BatchRow`: an edit that is ready to run (its parameters resolved and valid, its files present) or one that
is not, with the reason in one line. A bad row never stops the others.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..params import EditParams, field_flag, field_value_type

INPUT_FIELDS = ("id", "image", "mask", "prompt")
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
PARAM_TYPES = {f.name: f for f in dataclasses.fields(EditParams)}
#: The CLI's flag names are accepted too: `steps` for num_inference_steps, `guidance` for guidance_scale, ...
ALIASES = {field_flag(f)[2:].replace("-", "_"): f.name for f in dataclasses.fields(EditParams)
           if field_flag(f)[2:].replace("-", "_") != f.name}


@dataclass(frozen=True)
class BatchRow:
    """One row of a manifest: its position, id, input files and the full parameters of its edit, or the
    reason it cannot run (`error`, one line; `params` is then None)."""

    line: int  # 1-based line (JSON Lines) or record (CSV) number
    id: str
    image: Path | None = None
    mask: Path | None = None
    params: EditParams | None = None
    error: str | None = None
    region_masks: tuple[Path, ...] = ()  # the masks of params.regions, in order

    @property
    def ok(self) -> bool:
        return self.error is None

    def fingerprint(self, model: str) -> str:
        """What makes two runs of a row the same work: its input paths, its full parameters and the model.
        The files' contents are not read (a changed file under the same name is the same row: remake it with
        --overwrite)."""
        record = {"image": str(self.image), "mask": str(self.mask), "params": self.params.to_dict(), "model": model}
        if self.region_masks:
            record["region_masks"] = [str(m) for m in self.region_masks]
        return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


def read_manifest(path: str | Path) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(line, row) for every row of a .jsonl / .json-lines or .csv manifest; a row that is not an object is
    given as its error text. A file that cannot be read at all raises InputError."""
    from ..image_io import InputError

    path = Path(path)
    if not path.is_file():
        raise InputError(f"manifest {str(path)!r} does not exist: give a .jsonl or .csv file")
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".ndjson", ".csv"):
        raise InputError(f"manifest {str(path)!r}: name it .jsonl (one JSON object per line) or .csv")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read manifest {str(path)!r}: {exc}") from None
    if suffix == ".csv":
        yield from _csv_rows(text)
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, f"not valid JSON ({exc.msg} at column {exc.colno})"
            continue
        yield number, row if isinstance(row, dict) else "not a JSON object: write one {...} per line"


def _csv_rows(text: str) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """CSV records with a header; empty cells are absent, the rest parsed to each EditParams field's type."""
    reader = csv.DictReader(text.splitlines())
    for number, record in enumerate(reader, start=1):
        if None in record:
            yield number, "more cells than the header has columns"
            continue
        row: dict[str, Any] = {}
        try:
            for key, cell in record.items():
                if cell is None or cell.strip() == "":
                    continue
                row[key] = _csv_value(key, cell.strip())
        except ValueError as exc:
            yield number, str(exc)
            continue
        yield number, row


def _csv_value(key: str, cell: str) -> Any:
    field = PARAM_TYPES.get(ALIASES.get(key, key))
    if field is None or key in ("prompt", "negative_prompt"):
        return cell
    if isinstance(field.default, bool):
        if cell.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"{key}={cell!r}: write true or false")
        return cell.lower() in ("true", "1", "yes")
    kind = field_value_type(field)
    if kind is str:
        return cell
    try:
        return kind(cell)
    except ValueError:
        raise ValueError(f"{key}={cell!r} is not {'an integer' if kind is int else 'a number'}") from None


def derived_id(row: Mapping[str, Any]) -> str:
    """The id of a row that gives none: its image's name and a hash of the whole row, so that the same row
    keeps its id when the manifest is reordered or extended."""
    digest = hashlib.sha256(json.dumps(row, sort_keys=True, default=str).encode()).hexdigest()[:10]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(str(row.get("image", "row"))).stem).strip("._-") or "row"
    return f"{stem[:64]}-{digest}"


def derived_seed(row_id: str) -> int:
    """The seed of a row that gives none, from its id: stable across reruns, different between rows."""
    return int.from_bytes(hashlib.sha256(row_id.encode()).digest()[:4], "big") & 0x7FFFFFFF


def resolve_rows(rows: Iterable[tuple[int, dict[str, Any] | str]], base_dir: str | Path,
                 defaults: Mapping[str, Any] | None = None) -> list[BatchRow]:
    """Check every row and resolve its parameters: the row's own values over `defaults` (the command's flags
    over the model's recommended values). Files must exist; ids must be unique and safe as file names."""
    base = Path(base_dir)
    resolved: list[BatchRow] = []
    seen: dict[str, int] = {}
    for line, row in rows:
        if isinstance(row, str):
            resolved.append(BatchRow(line, f"line-{line}", error=row))
            continue
        row, alias_error = _with_field_names(row)
        row_id = str(row["id"]) if row.get("id") is not None else derived_id(row)
        error = alias_error or _row_error(row, row_id, seen)
        if error is None:
            image, mask = (base / str(row["image"])), (base / str(row["mask"]))
            error = _missing_file(image, "image") or _missing_file(mask, "mask")
        region_masks: list[Path] = []
        if error is None:
            row, region_masks, error = _split_regions(row, base)
        if error is None:
            params, error = _row_params(row, row_id, defaults or {})
        if error is not None:
            resolved.append(BatchRow(line, row_id, error=error))
            continue
        seen[row_id] = line
        resolved.append(BatchRow(line, row_id, image.resolve(), mask.resolve(), params,
                                 region_masks=tuple(m.resolve() for m in region_masks)))
    return resolved


def _with_field_names(row: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The row with flag names (steps, guidance, ...) turned into field names; an error when a row gives both."""
    named = {ALIASES.get(key, key): value for key, value in row.items()}
    both = sorted(key for key in row if key in ALIASES and ALIASES[key] in row)
    if both:
        return named, f"{both[0]} and {ALIASES[both[0]]} are the same parameter: give one"
    return named, None


def _row_error(row: Mapping[str, Any], row_id: str, seen: Mapping[str, int]) -> str | None:
    unknown = sorted(set(row) - set(INPUT_FIELDS) - set(PARAM_TYPES))
    if unknown:
        return (f"unknown field(s) {', '.join(unknown)}; a row has id, image, mask, prompt and edit parameters "
                f"({', '.join(sorted(PARAM_TYPES))})")
    missing = [key for key in ("image", "mask", "prompt") if not row.get(key)]
    if missing:
        return f"missing {', '.join(missing)}: every row needs image, mask and prompt"
    if not ID_PATTERN.fullmatch(row_id):
        return (f"id {row_id!r} cannot name a file: use letters, digits, '.', '_' and '-' (at most 128, starting "
                "with a letter or digit)")
    if row_id in seen:
        return f"id {row_id!r} is also the id of line {seen[row_id]}: give every row its own id"
    return None


def _split_regions(row: Mapping[str, Any], base: Path) -> tuple[dict[str, Any], list[Path], str | None]:
    """The row with its regions' masks taken out (the params keep the prompts), the masks' paths, or the error."""
    regions = row.get("regions")
    if not regions:
        return dict(row), [], None
    if not isinstance(regions, list) or not all(isinstance(r, dict) and r.get("mask") for r in regions):
        return dict(row), [], ('regions must be a list of objects, each {"mask": FILE, "prompt": TEXT} (optionally '
                               '"negative_prompt" and "strength"); CSV manifests cannot hold regions')
    masks = [base / str(region["mask"]) for region in regions]
    for number, path in enumerate(masks, start=2):
        missing = _missing_file(path, f"mask of region {number}")
        if missing:
            return dict(row), [], missing
    prompts = [{k: v for k, v in region.items() if k != "mask"} for region in regions]
    return {**row, "regions": prompts}, masks, None


def _missing_file(path: Path, what: str) -> str | None:
    if not path.is_file():
        return f"{what} {str(path)!r} does not exist" + (" or is not a file" if path.exists() else "")
    return None


def _row_params(row: Mapping[str, Any], row_id: str, defaults: Mapping[str, Any]):
    values = {**defaults, **{k: v for k, v in row.items() if k in PARAM_TYPES}}
    if values.get("seed") is None:
        values["seed"] = derived_seed(row_id)
    try:
        return EditParams.from_dict(values), None
    except (TypeError, ValueError) as exc:
        return None, " ".join(str(exc).split())
