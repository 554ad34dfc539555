"""``kgen verify --all``'s runner: the library's verify in a spawned worker, one per model."""

from __future__ import annotations

from kgen import catalog_run
from kgen.examples.digits import MODEL_PATH


def test_a_worker_verifies_and_sends_its_row_back(tmp_path):
    rows = []
    (row,) = catalog_run.run_catalog(
        [str(MODEL_PATH)], on_row=lambda done, pending: rows.append((len(done), pending))
    )
    assert row.ok, row
    assert row.error == "" and row.layers == 14 and row.params > 1000
    assert row.max_rel is not None and row.max_rel <= 1e-4
    assert rows == [(1, [])]
    table = catalog_run.markdown_table([row], "kgen verify --all")
    assert "1/1 passed" in table and str(MODEL_PATH) in table


def test_a_failing_source_is_a_failed_row_not_a_crash(tmp_path):
    missing = str(tmp_path / "missing.keras")
    (row,) = catalog_run.run_catalog([missing])
    assert not row.ok and "SourceError" in row.error and row.max_rel is None


def test_a_worker_past_its_time_is_stopped(tmp_path):
    (row,) = catalog_run.run_catalog([str(MODEL_PATH)], timeout=0.5)
    assert not row.ok and row.error == "timeout" and row.wall < 30


def test_applications_are_verified_without_fetching_weights():
    """verify --all randomises every variable: nothing to download (it runs offline)."""
    assert catalog_run.source_of("MobileNetV2").weights == "none"
    assert catalog_run.source_of(str(MODEL_PATH)).weights is None
