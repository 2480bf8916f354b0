"""The one way JSON records are written and read back."""

from __future__ import annotations

from pipeline.json_files import read_json, write_json


def test_a_record_round_trips_into_new_folders_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "runs" / "sst2" / "eval.json"
    assert read_json(path) == {}  # not written yet: a run still going
    assert write_json(path, {"metrics": {"accuracy": 0.8}}) == path
    write_json(path, {"metrics": {"accuracy": 0.9}})  # replaced whole
    assert read_json(path) == {"metrics": {"accuracy": 0.9}}
    assert [p.name for p in path.parent.iterdir()] == ["eval.json"]
    assert path.read_text().endswith("}\n")
