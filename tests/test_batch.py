"""`bld batch`: manifests checked up front, results written once each, jobs that resume after any kill.

The first tests need no Ray (rows, the ledger, one worker's edit); the last ones run a local Ray with two
one-CPU workers on the tiny random model, killing the driver or a worker in the middle of a job.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from conftest import make_image, make_mask

from bld.batch.ledger import BATCH_KEY, LEDGER, Ledger, output_names
from bld.batch.manifest import derived_id, read_manifest, resolve_rows
from bld.batch.runner import plan_rows, worker_shape
from bld.batch.worker import RowEditor, RowTask, WorkerConfig
from bld.editing import params_from_metadata, run_edit
from bld.image_io import encode_png, read_png_metadata
from bld.params import EditParams

FAST = {"num_inference_steps": 3, "num_images": 1}


def write_inputs(folder: Path, count: int) -> list[dict]:
    """`count` rows with their image and mask files (two different images, masks moving)."""
    rows = []
    for k in range(count):
        image, mask = folder / f"image-{k}.png", folder / f"mask-{k}.png"
        make_image(seed=k % 2).save(image)
        make_mask(box=(8 + k % 5, 8, 40, 40)).save(mask)
        rows.append({"id": f"row-{k:02d}", "image": image.name, "mask": mask.name, "prompt": "a red star", **FAST})
    return rows


def write_manifest(folder: Path, rows: list, name="manifest.jsonl") -> Path:
    path = folder / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def resolved(folder, rows, defaults=None):
    return resolve_rows(read_manifest(write_manifest(folder, rows)), folder, defaults)


# ---- rows -------------------------------------------------------------------------------------------

def test_bad_rows_are_named_with_their_line_before_anything_runs(tmp_path):
    good = write_inputs(tmp_path, 1)[0]
    rows = resolved(tmp_path, [
        good,
        {**good, "id": "b", "colour": "red"},
        {**good, "id": "c", "image": "missing.png"},
        {**good, "id": "d", "num_inference_steps": 0},
        {**good, "id": "e/../x"},
        {**good},  # the same id as line 1
        "{not json",
        "[1, 2]",
        {**good, "id": "f", "prompt": ""},
        {**good, "id": "g", "steps": 5, "num_inference_steps": 5},
    ])
    errors = {row.line: row.error for row in rows}
    assert errors[1] is None
    assert "unknown field(s) colour" in errors[2]
    assert "missing.png" in errors[3] and "does not exist" in errors[3]
    assert "num_inference_steps=0 is out of range" in errors[4]
    assert "cannot name a file" in errors[5]
    assert "also the id of line 1" in errors[6]
    assert "not valid JSON" in errors[7]
    assert "not a JSON object" in errors[8]
    assert "missing prompt" in errors[9]
    assert "the same parameter" in errors[10]
    assert all("\n" not in e for e in errors.values() if e)


def test_row_values_win_over_defaults_and_flag_names_are_accepted(tmp_path):
    good = {k: v for k, v in write_inputs(tmp_path, 1)[0].items() if k != "num_inference_steps"}
    [row] = resolved(tmp_path, [{**good, "steps": 7, "guidance": 3.0}], defaults={"num_inference_steps": 9,
                                                                                   "skip_fraction": 0.5})
    assert (row.params.num_inference_steps, row.params.guidance_scale, row.params.skip_fraction) == (7, 3.0, 0.5)
    assert row.image == (tmp_path / good["image"]).resolve()


def test_csv_manifest_parses_each_field_to_its_type(tmp_path):
    write_inputs(tmp_path, 1)
    (tmp_path / "m.csv").write_text("id,image,mask,prompt,num_inference_steps,skip_fraction,invert_mask,seed\n"
                                    "a,image-0.png,mask-0.png,a red star,12,0.5,false,\n"
                                    "b,image-0.png,mask-0.png,a red star,twelve,0.5,true,3\n")
    a, b = resolve_rows(read_manifest(tmp_path / "m.csv"), tmp_path)
    assert a.ok and (a.params.num_inference_steps, a.params.skip_fraction, a.params.invert_mask) == (12, 0.5, False)
    assert "is not an integer" in b.error


def test_a_row_without_id_or_seed_gets_the_same_ones_in_every_run(tmp_path):
    good = {k: v for k, v in write_inputs(tmp_path, 1)[0].items() if k != "id"}
    first, second = resolved(tmp_path, [good]), resolved(tmp_path, [{"image": "x.png"}, good])
    assert first[0].id == second[1].id == derived_id(good) and first[0].id.startswith("image-0-")
    assert first[0].params.seed == second[1].params.seed
    other = resolved(tmp_path, [{**good, "prompt": "a blue disc"}])[0]
    assert other.id != first[0].id and other.params.seed != first[0].params.seed
    assert first[0].fingerprint("m") != other.fingerprint("m")
    assert first[0].fingerprint("m") != first[0].fingerprint("n")


def test_rows_with_regions_keep_their_masks_apart_from_their_params(tmp_path):
    good = write_inputs(tmp_path, 2)[0]
    region = {"mask": "mask-1.png", "prompt": "a blue disc", "strength": 0.5}
    ok, missing, bad, wrong_field = resolved(tmp_path, [
        {**good, "regions": [region]},
        {**good, "id": "b", "regions": [{**region, "mask": "nope.png"}]},
        {**good, "id": "c", "regions": ["a blue disc"]},
        {**good, "id": "d", "regions": [{**region, "colour": "red"}]},
    ])
    assert ok.ok and ok.region_masks == ((tmp_path / "mask-1.png").resolve(),)
    assert [(r.prompt, r.strength) for r in ok.params.regions] == [("a blue disc", 0.5)]
    assert ok.fingerprint("m") != resolved(tmp_path, [good])[0].fingerprint("m")
    assert "mask of region 2" in missing.error and "nope.png" in missing.error
    assert "regions must be a list of objects" in bad.error
    assert "unknown region field(s) colour" in wrong_field.error


# ---- the output folder --------------------------------------------------------------------------------

def test_ledger_survives_a_line_cut_short_and_removes_temporary_files(tmp_path):
    (tmp_path / LEDGER).write_text(json.dumps({"id": "a", "status": "ok", "fingerprint": "f", "outputs": []})
                                   + "\n" + '{"id": "b", "sta')
    (tmp_path / ".b.png.x1y2.png.tmp").write_bytes(b"half a png")
    ledger = Ledger.open(tmp_path)
    assert set(ledger.records) == {"a"} and ledger.done("a", "f") and not ledger.done("a", "g")
    assert not list(tmp_path.glob(".*tmp"))
    ledger.append({"id": "b", "status": "error", "error": "x"})
    lines = (tmp_path / LEDGER).read_text().splitlines()
    assert json.loads(lines[-1])["id"] == "b" and len(lines) == 3
    ledger.compact(["b", "a"])
    assert [json.loads(line)["id"] for line in (tmp_path / LEDGER).read_text().splitlines()] == ["b", "a"]


def test_results_of_a_killed_run_are_recovered_and_other_files_are_not_overwritten(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    rows = resolved(inputs, write_inputs(inputs, 3))
    out = tmp_path / "out"
    out.mkdir()
    fingerprint = rows[0].fingerprint("m")
    tag = {"id": rows[0].id, "fingerprint": fingerprint, "output": {"seed": 5}}
    (out / "row-00.png").write_bytes(encode_png(make_image(), {BATCH_KEY: json.dumps(tag)}))  # written, not recorded
    make_image().save(out / "row-01.png")  # someone else's file under row 1's name
    ledger = Ledger.open(out)
    tasks, done_before = plan_rows(rows, ledger, "m", overwrite=False)
    assert done_before == 1 and ledger.records["row-00"]["recovered"] is True
    assert ledger.records["row-00"]["outputs"] == [{"path": "row-00.png", "seed": 5}]
    assert "is not this row's result" in ledger.records["row-01"]["error"]
    assert [t.id for t in tasks] == ["row-02"]
    tasks, _ = plan_rows(rows, Ledger.open(out), "m", overwrite=True)  # replaces the other file, keeps row 0
    assert [t.id for t in tasks] == ["row-01", "row-02"]


def test_a_row_changed_since_its_results_were_made_is_not_silently_remade(tmp_path):
    rows = resolved(tmp_path, write_inputs(tmp_path, 1))
    out = tmp_path / "out"
    ledger = Ledger.open(out)
    make_image().save(out / "row-00.png")
    ledger.append({"id": "row-00", "status": "ok", "fingerprint": "older", "outputs": [{"path": "row-00.png"}]})
    tasks, _ = plan_rows(rows, ledger, "m", overwrite=False)
    assert not tasks and "other inputs or parameters" in ledger.records["row-00"]["error"]
    tasks, _ = plan_rows(rows, ledger, "m", overwrite=True)
    assert [t.id for t in tasks] == ["row-00"]


def test_workers_follow_the_gpus_or_the_cores():
    assert worker_shape({"CPU": 16, "GPU": 4}, "auto", 100, None, None) == (4, 1.0, 1.0)
    assert worker_shape({"CPU": 16, "GPU": 2}, "auto", 100, None, 0.5) == (4, 1.0, 0.5)
    assert worker_shape({"CPU": 16, "GPU": 2}, "cpu", 100, None, None) == (4, 4.0, 0.0)
    assert worker_shape({"CPU": 2}, "auto", 100, None, None) == (1, 2.0, 0.0)
    assert worker_shape({"CPU": 2}, "auto", 100, 2, None) == (2, 1.0, 0.0)
    assert worker_shape({"CPU": 64}, "auto", 3, None, None) == (3, 21.0, 0.0)


# ---- one worker's edit ------------------------------------------------------------------------------

def test_a_row_edited_by_a_worker_equals_the_same_edit_run_alone(tmp_path):
    rows = resolved(tmp_path, [{**write_inputs(tmp_path, 1)[0], "num_images": 2, "seed": 4}])
    editor = RowEditor(WorkerConfig("tiny-random"))
    task = RowTask(rows[0].id, 1, str(rows[0].image), str(rows[0].mask), rows[0].params.to_dict(), "fp")
    result = editor.edit(task)
    assert result["status"] == "ok" and [o["path"] for o in result["outputs"]] == output_names("row-00", 2)
    params = EditParams.from_dict({**rows[0].params.to_dict(), "guidance_scale": 7.5})
    alone = run_edit(editor.pipe, PIL.Image.open(rows[0].image).convert("RGB"),
                     PIL.Image.open(rows[0].mask).convert("L"), params, scorer=editor.scorer)
    for data, single in zip(result["pngs"], alone):
        path = tmp_path / "r.png"
        path.write_bytes(data)
        assert np.array_equal(np.asarray(PIL.Image.open(path)), np.asarray(single.image))
        assert params_from_metadata(read_png_metadata(path)).seed == single.seed
        assert json.loads(read_png_metadata(path)[BATCH_KEY])["fingerprint"] == "fp"
    region_mask = tmp_path / "region.png"
    make_mask(box=(44, 44, 60, 60)).save(region_mask)
    with_region = dict(rows[0].params.to_dict(), regions=[{"prompt": "a blue disc"}], num_images=1)
    regions = editor.edit(RowTask("y", 1, str(rows[0].image), str(rows[0].mask), with_region, "f", (str(region_mask),)))
    assert regions["status"] == "ok" and len(regions["outputs"][0]["region_scores"]) == 2
    (tmp_path / "broken.png").write_text("not an image")
    bad = editor.edit(RowTask("x", 1, str(rows[0].image), str(tmp_path / "broken.png"), FAST | {"seed": 1}, "f"))
    assert bad["status"] == "error" and "broken.png" in bad["error"] and "not an image" in bad["error"]


# ---- jobs on a local Ray ------------------------------------------------------------------------------

def bld_batch(folder: Path, *extra) -> list[str]:
    return [sys.executable, "-m", "bld", "batch", str(folder / "manifest.jsonl"), "-o", str(folder / "out"),
            "--model", "tiny-random", "--workers", "2", "--no-progress", *extra]


def records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "out" / LEDGER).read_text().splitlines() if line.strip()]


def wait_for_records(folder: Path, count: int, process, timeout=240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        path = folder / "out" / LEDGER
        if path.exists() and len([x for x in path.read_text().splitlines() if x.strip()]) >= count:
            return
        time.sleep(0.2)
    raise AssertionError(f"the job did not record {count} rows in time (exit {process.poll()})")


def stray_files(folder: Path) -> list[str]:
    return [p.name for p in (folder / "out").iterdir() if p.name.startswith(".")]


def start(folder: Path, *extra):
    return subprocess.Popen(bld_batch(folder, *extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def finish(process, timeout=300):
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def end_session(process) -> None:
    """Whatever Ray processes a killed driver left behind go with it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.mark.slow
def test_a_job_edits_every_good_row_records_the_bad_ones_and_retries_only_those_when_rerun(tmp_path):
    rows = write_inputs(tmp_path, 20)
    rows[3]["mask"] = "missing.png"  # found before any model loads
    empty = tmp_path / "empty.png"
    PIL.Image.new("L", (64, 64)).save(empty)
    rows[7]["mask"] = empty.name  # found by the worker
    write_manifest(tmp_path, rows)
    code, _, err = finish(start(tmp_path))
    assert code == 1, err
    assert "20 rows: 18 ok, 2 failed" in err
    by_id = {r["id"]: r for r in records(tmp_path)}
    assert len(by_id) == 20 == len(records(tmp_path))
    assert "missing.png" in by_id["row-03"]["error"] and "mask is empty" in by_id["row-07"]["error"]
    ok = [r for r in by_id.values() if r["status"] == "ok"]
    assert len(ok) == 18 and len({r["worker"] for r in ok}) == 2  # both workers took rows
    pngs = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert pngs == sorted(f"row-{k:02d}.png" for k in range(20) if k not in (3, 7))
    params = params_from_metadata(read_png_metadata(tmp_path / "out" / "row-05.png"))
    assert params.num_inference_steps == 3 and params.seed == by_id["row-05"]["outputs"][0]["seed"]

    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("*.png")}
    code, _, err = finish(start(tmp_path))  # the failed rows are tried again (their files may have been fixed)
    assert code == 1 and "18 done before; 1 edited now" in err
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("*.png")} == before
    assert len(records(tmp_path)) == 20


@pytest.mark.slow
def test_a_job_whose_driver_is_killed_finishes_every_row_once_when_rerun_then_reruns_as_a_no_op(tmp_path):
    write_manifest(tmp_path, [{**row, "num_inference_steps": 12} for row in write_inputs(tmp_path, 20)])
    process = start(tmp_path)
    try:
        wait_for_records(tmp_path, 4, process)
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        end_session(process)
    done = {r["id"] for r in records(tmp_path) if r["status"] == "ok"}
    assert 4 <= len(done) < 20
    kept = {i: (tmp_path / "out" / f"{i}.png").stat().st_mtime_ns for i in done}
    code, _, err = finish(start(tmp_path))
    assert code == 0, err
    assert "20 rows: 20 ok, 0 failed" in err
    ids = [r["id"] for r in records(tmp_path)]
    assert sorted(ids) == [f"row-{k:02d}" for k in range(20)]  # each row once
    assert all((tmp_path / "out" / f"{i}.png").stat().st_mtime_ns == t for i, t in kept.items())  # not remade
    assert len(list((tmp_path / "out").glob("*.png"))) == 20 and not stray_files(tmp_path)

    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (tmp_path / "out").iterdir()}
    code, _, err = finish(start(tmp_path))
    assert code == 0 and "20 done before; 0 edited now" in err
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (tmp_path / "out").iterdir()} == before


@pytest.mark.slow
def test_a_job_whose_worker_is_killed_retries_its_rows_and_loses_none(tmp_path):
    write_manifest(tmp_path, [{**row, "num_inference_steps": 12} for row in write_inputs(tmp_path, 20)])
    process = start(tmp_path)
    try:
        wait_for_records(tmp_path, 2, process)
        victim = records(tmp_path)[0]["worker"]
        os.kill(int(victim.rsplit(":", 1)[1]), signal.SIGKILL)
        code, _, err = finish(process)
    finally:
        end_session(process)
    assert code == 0, err
    final = records(tmp_path)
    assert sorted(r["id"] for r in final) == [f"row-{k:02d}" for k in range(20)]
    assert all(r["status"] == "ok" for r in final)
    assert len({r["worker"] for r in final}) >= 3  # the two workers, then the killed one restarted
    assert len(list((tmp_path / "out").glob("*.png"))) == 20 and not stray_files(tmp_path)


@pytest.mark.parametrize("argv, message", [
    (["--workers", "0"], "--workers=0 is out of range"),
    (["--steps", "0"], "num_inference_steps=0 is out of range"),
])
def test_bad_flags_fail_in_one_line(tmp_path, argv, message):
    write_manifest(tmp_path, write_inputs(tmp_path, 1))
    result = subprocess.run(bld_batch(tmp_path, *argv), capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


def test_a_missing_manifest_fails_in_one_line(tmp_path):
    result = subprocess.run(bld_batch(tmp_path), capture_output=True, text=True)
    assert result.returncode == 2 and "manifest" in result.stderr and "does not exist" in result.stderr


def test_cpu_offload_reaches_the_workers_and_needs_a_gpu():
    from bld.apps.cli import build_parser
    from bld.image_io import InputError

    args = build_parser().parse_args(["batch", "m.jsonl", "-o", "out", "--cpu-offload"])
    assert args.cpu_offload is True
    with pytest.raises(InputError, match="--cpu-offload moves each model to the GPU while it runs"):
        RowEditor(WorkerConfig("tiny-random", device="cpu", cpu_offload=True))
