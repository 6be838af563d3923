"""Points behind each example: every source, the restricted unpickler, and bad points as bad input."""

import gzip
import json
import os
import pickle

import numpy as np
import pytest

from sr_lightning.data.format import BadRecord, pair_from_record
from sr_lightning.data.points import PointsFileError, ProblemIndex, read_points_file, restricted_load
from tests.helpers import SAMPLE, SAMPLE_PROBLEMS, fixture_lines

RECORD = json.loads(fixture_lines()[0])  # expression 900, metadata names original_sample_problems.json
ORIGINAL = json.loads(SAMPLE_PROBLEMS.read_text())["900"]


def pair_in(folder, record=RECORD):
    return pair_from_record(record, f"{folder / 'data.jsonl'}:1")


def test_the_file_a_record_names_beside_its_data_and_problems_json():
    problem = ProblemIndex().find(pair_from_record(RECORD, f"{SAMPLE}:1"))
    assert problem.expression_id == 900 and np.array_equal(problem.X, np.asarray(ORIGINAL["X"]))


def write_original_pickle(path, X, y, ids=(900,)):
    expressions = [{"id": i, "X_data": X, "y_data": y, "expression": "(x0 + x1)"} for i in ids]
    path.write_bytes(gzip.compress(pickle.dumps({"expressions": expressions, "config": {"n": 3}})))


def test_the_originals_gzipped_pickle_loads_through_the_restricted_unpickler(tmp_path):
    X, y = np.asarray(ORIGINAL["X"]), np.asarray(ORIGINAL["y"])
    write_original_pickle(tmp_path / "original_sample_problems.json", X, y)  # the name the record gives
    problem = ProblemIndex().find(pair_in(tmp_path))
    assert np.array_equal(problem.X, X) and np.array_equal(problem.y, y) and problem.expression == "(x0 + x1)"


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_that_would_run_code_is_refused_in_one_line(tmp_path):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pkl.gz"
    evil.write_bytes(gzip.compress(pickle.dumps({"expressions": [Payload(marker)]})))
    with pytest.raises(PointsFileError) as error:
        restricted_load(evil)
    assert str(error.value).startswith(f"{evil}: refusing to unpickle") and "system" in str(error.value)
    assert "\n" not in str(error.value) and not marker.exists()
    with pytest.raises(PointsFileError, match="evil.pkl.gz"):
        ProblemIndex(evil)


def test_a_points_file_serves_every_example_as_json_or_npz(tmp_path):
    X, y = np.arange(6.0).reshape(3, 2), np.array([1.0, 2.0, 3.0])
    (tmp_path / "points.json").write_text(json.dumps({"900": {"X": X.tolist(), "y": y.tolist()}}))
    np.savez(tmp_path / "points.npz", X_900=X, y_900=y)
    for name in ("points.json", "points.npz"):
        problem = ProblemIndex(tmp_path / name).find(pair_from_record(RECORD, f"{SAMPLE}:1"))
        assert np.array_equal(problem.X, X) and np.array_equal(problem.y, y), name
    assert set(read_points_file(tmp_path / "points.npz")) == {900}


def test_inline_points_come_first():
    record = {**RECORD, "X_data": [[1.0, 2.0], [3.0, 4.0]], "y_data": [5.0, 6.0]}
    problem = ProblemIndex().find(pair_from_record(record, f"{SAMPLE}:1"))
    assert problem.X.shape == (2, 2) and problem.y.tolist() == [5.0, 6.0]
    with pytest.raises(BadRecord, match="X_data"):
        pair_from_record({**RECORD, "X_data": [[1.0]]}, "f:1")


@pytest.mark.parametrize("X, y, reason", [
    ([[1.0, 2.0], [3.0, 4.0]], [1.0], "disagree in shape"),
    ([[1.0, float("nan")], [3.0, 4.0]], [1.0, 2.0], "not finite"),
    ([1.0, 2.0], [1.0, 2.0], "disagree in shape"),
])
def test_unusable_points_are_bad_input_never_zeros(X, y, reason):
    with pytest.raises(BadRecord, match=reason):
        ProblemIndex().find(pair_from_record({**RECORD, "X_data": X, "y_data": y}, "f:1"))


def test_missing_points_are_bad_input_and_lookup_says_none(tmp_path):
    pair = pair_in(tmp_path)  # nothing beside it
    with pytest.raises(BadRecord, match=r"no points \(expression_id 900"):
        ProblemIndex().find(pair)
    assert ProblemIndex().lookup(pair) is None
    without_id = {k: v for k, v in RECORD.items() if k != "expression_id"}
    with pytest.raises(BadRecord, match="no expression_id"):
        ProblemIndex().find(pair_from_record(without_id, "f:1"))
