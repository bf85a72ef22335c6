"""The SQL console is strictly read-only and bounded (issue 11, point 5)."""

from __future__ import annotations

import pytest

from clipeval.errors import ClipevalError


@pytest.mark.parametrize("sql, message", [
    ("SELECT * FROM enable_logging()", "enable_logging() is not among those allowed"),
    ("SELECT * FROM enable_profiling()", "enable_profiling() is not among those allowed"),
    ("SELECT * FROM checkpoint()", "checkpoint() is not among those allowed"),
    ("SELECT * FROM force_checkpoint()", "force_checkpoint() is not among those allowed"),
    ("SELECT * FROM duckdb_logs()", "duckdb_logs() is not among those allowed"),
    ("CALL enable_logging()", "CALL statements are refused"),
    ("PRAGMA enable_profiling", "only read-only PRAGMAs"),
    ("SELECT nextval('s')", "does not call nextval()"),
    ("SELECT setseed(0.5)", "does not call setseed()"),
    ("WITH d AS (DELETE FROM neurons RETURNING *) SELECT * FROM d", "a DELETE inside the query"),
    ("WITH d AS (INSERT INTO meta VALUES ('a', 'b') RETURNING *) SELECT * FROM d", "a INSERT inside the query"),
    ("WITH d AS (UPDATE neurons SET label = 'x' RETURNING *) SELECT count(*) FROM d", "a UPDATE inside the query"),
    ("-- comment\nEXPLAIN ANALYZE DELETE FROM neurons", "DELETE statements are refused"),
    ("/* c */ EXPLAIN ANALYZE DELETE FROM neurons", "DELETE statements are refused"),
    ("-- a\n-- b\nEXPLAIN ANALYZE WITH d AS (DELETE FROM neurons RETURNING *) SELECT * FROM d", "a DELETE inside"),
])
def test_console_refuses_with_a_message(run_store, sql, message):
    store, _, _ = run_store
    before = (store.data_version(), store.scalar("SELECT count(*) FROM neurons"), store.scalar("SELECT count(*) FROM meta"))
    with pytest.raises(ClipevalError, match=message.replace("(", r"\(").replace(")", r"\)")):
        store.read_only_query(sql)
    after = (store.data_version(), store.scalar("SELECT count(*) FROM neurons"), store.scalar("SELECT count(*) FROM meta"))
    assert after == before


@pytest.mark.parametrize("sql", ["SELECT * FROM range(3)", "SELECT * FROM duckdb_tables()",
                                 "SELECT label, row_number() OVER (ORDER BY unit) FROM neurons LIMIT 3",
                                 "-- the labels\nSELECT lower(label) FROM neurons LIMIT 2",
                                 "SELECT list_transform([1, 2], lambda x: x + 1)", "SELECT unnest([1, 2])", "EXPLAIN ANALYZE SELECT count(*) FROM runs"])
def test_console_answers_reads_that_call_allowed_functions(run_store, sql):
    store, _, _ = run_store
    frame, cut = store.read_only_query(sql)
    assert len(frame) >= 1 and cut == ""


def test_console_result_is_capped_in_bytes_as_well_as_rows(run_store):
    store, _, _ = run_store
    frame, cut = store.read_only_query("SELECT repeat('x', 10000) AS big FROM range(100000)", max_rows=100_000,
                                       max_bytes=2 * 2**20)
    assert 0 < len(frame) < 300 and "MB of results" in cut
    frame, cut = store.read_only_query("SELECT * FROM range(50)", max_rows=10)
    assert len(frame) == 10 and "cut at 10 rows" in cut
