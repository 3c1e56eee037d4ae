"""qwenvl.synth.compare: two report JSONs, record by record."""
import json
import math

import pytest

from qwenvl.synth.compare import compare, main, paired


def _write(path, scores: dict):
    recs = [{"file": f"runs/h/{f}", "id": i, "task": t, "score": s} for (f, i, t), s in scores.items()]
    path.write_text(json.dumps({"overall": {}, "records": recs}))
    return str(path)


def test_paired_difference_and_standard_error():
    a, b = [0.0, 1.0, 0.5, 0.2], [1.0, 1.0, 0.0, 0.6]
    d = [1.0, 0.0, -0.5, 0.4]
    mean = sum(d) / 4
    se = math.sqrt(sum((x - mean) ** 2 for x in d) / 3 / 4)
    assert paired(a, b) == pytest.approx((mean, se))
    assert paired([0.3], [0.5]) == pytest.approx((0.2, 0.0))


def test_compare_pairs_records_by_file_and_id(tmp_path, capsys):
    a = _write(tmp_path / "a.json", {("x.jsonl", "r1", "refer"): 0.2, ("x.jsonl", "r2", "refer"): 0.9,
                                     ("y.jsonl", "r1", "refer"): 0.5, ("x.jsonl", "v1", "video_grounding"): 0.1,
                                     ("x.jsonl", "only-a", "count"): 1.0})
    b = _write(tmp_path / "b.json", {("y.jsonl", "r1", "refer"): 0.7, ("x.jsonl", "r2", "refer"): 0.9,
                                     ("x.jsonl", "r1", "refer"): 0.0, ("x.jsonl", "v1", "video_grounding"): 0.4})
    rows = compare(a, b)
    refer = next(r for r in rows if r.startswith("| `refer`"))
    d, se = paired([0.2, 0.9, 0.5], [0.0, 0.9, 0.7])
    assert refer == f"| `refer` | 3 | 0.533 | 0.533 | {d:+.3f} | {se:.3f} | 1 / 1 |"
    assert "| `video_grounding` | 1 | 0.100 | 0.400 | +0.300 | 0.000 | 1 / 0 |" in rows
    assert rows.index(refer) < next(i for i, r in enumerate(rows) if "video_grounding" in r)  # report's task order
    assert not any("`count`" in r for r in rows)  # only in A: left out, and said so
    out = tmp_path / "t.md"
    assert main([a, b, "--out", str(out)]) == 0
    got = capsys.readouterr()
    assert got.out == out.read_text() and "4 records in both files (5 in A, 4 in B)" in got.err


def test_bad_inputs_are_clear_errors(tmp_path):
    a = _write(tmp_path / "a.json", {("x.jsonl", "r1", "refer"): 0.2})
    other = _write(tmp_path / "o.json", {("z.jsonl", "r9", "refer"): 0.2})
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"overall": {}, "files": {}}))
    for argv, want in (([a, str(tmp_path / "nope.json")], "no such file; write it with python -m qwenvl.synth.report"),
                       ([a, str(old)], "not a report JSON with per-record scores"),
                       ([a, other], "share no records; score both on the same --heldout files")):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert want in str(e.value)
    twice = tmp_path / "twice.json"
    rec = {"file": "x.jsonl", "id": "r1", "task": "refer", "score": 1.0}
    twice.write_text(json.dumps({"records": [rec, rec]}))
    with pytest.raises(SystemExit, match="appears twice"):
        main([a, str(twice)])
