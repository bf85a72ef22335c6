"""The SQL console is strictly read-only and bounded (issue 11, point 5)."""

from __future__ import annotations

import itertools

import pytest

from clipeval.errors import ClipevalError
from clipeval.store import Store


@pytest.mark.parametrize(
    "sql, message",
    [
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
    ],
)
def test_console_refuses_with_a_message(run_store, sql, message):
    store, _, _ = run_store
    before = (
        store.data_version(),
        store.scalar("SELECT count(*) FROM neurons"),
        store.scalar("SELECT count(*) FROM meta"),
    )
    with pytest.raises(ClipevalError, match=message.replace("(", r"\(").replace(")", r"\)")):
        store.read_only_query(sql)
    after = (
        store.data_version(),
        store.scalar("SELECT count(*) FROM neurons"),
        store.scalar("SELECT count(*) FROM meta"),
    )
    assert after == before


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM range(3)",
        "SELECT * FROM duckdb_tables()",
        "SELECT label, row_number() OVER (ORDER BY unit) FROM neurons LIMIT 3",
        "-- the labels\nSELECT lower(label) FROM neurons LIMIT 2",
        "SELECT list_transform([1, 2], lambda x: x + 1)",
        "SELECT unnest([1, 2])",
        "EXPLAIN ANALYZE SELECT count(*) FROM runs",
    ],
)
def test_console_answers_reads_that_call_allowed_functions(run_store, sql):
    store, _, _ = run_store
    frame, cut = store.read_only_query(sql)
    assert len(frame) >= 1 and cut == ""


def test_console_result_is_capped_in_bytes_as_well_as_rows(run_store):
    store, _, _ = run_store
    frame, cut = store.read_only_query(
        "SELECT repeat('x', 10000) AS big FROM range(100000)", max_rows=100_000, max_bytes=2 * 2**20
    )
    assert 0 < len(frame) < 300 and "MB of results" in cut
    frame, cut = store.read_only_query("SELECT * FROM range(50)", max_rows=10)
    assert len(frame) == 10 and "cut at 10 rows" in cut


def test_console_checks_the_arguments_of_table_functions():
    """A table function hidden in a subquery argument of an allowed one (issue 25, point 5)."""
    from clipeval.store.console import check_read_only_sql

    with pytest.raises(ClipevalError, match=r"read_csv\(\) is not among those allowed"):
        check_read_only_sql("SELECT * FROM summary((SELECT * FROM read_csv('/etc/passwd')))")
    with pytest.raises(ClipevalError, match=r"read_parquet\(\) is not among those allowed"):
        check_read_only_sql("SELECT * FROM range((SELECT count(*) FROM read_parquet('x.parquet')))")
    check_read_only_sql("SELECT * FROM summary((SELECT * FROM range(3)))")


def test_one_huge_value_is_cut_inside_the_query(imported_store):
    """One 1 MB cell comes back cut to the cell cap, and says so (issue 25, point 5)."""
    store = Store(imported_store[0])
    frame, cut = store.read_only_query("SELECT string_agg(repeat('y', 1000), ',') AS s, 7 AS n FROM range(1000)")
    assert len(frame) == 1 and len(frame["s"][0]) == 100_001 and frame["s"][0].endswith("…")
    assert frame["n"][0] == 7 and "1 cell(s) longer than 100,000 characters cut" in cut
    frame, cut = store.read_only_query("SELECT list(repeat('y', 1000)) AS l, repeat('z', 3) AS z FROM range(1000)")
    assert frame["l"][0] is None and frame["z"][0] == "zzz" and "1 cell(s)" in cut
    frame, cut = store.read_only_query("SELECT label, label FROM neurons -- no closing parenthesis swallowed")
    assert len(frame) == store.scalar("SELECT count(*) FROM neurons") and cut == ""


def test_a_value_too_big_to_build_is_refused_by_the_memory_limit(imported_store):
    """The query of issue 25 point 5 (a 954 MB string) stops inside DuckDB at the read memory limit."""
    store = Store(imported_store[0])
    with pytest.raises(ClipevalError, match="needs more memory than a store read may use"):
        store.read_only_query("SELECT string_agg(repeat('y',100000), ',') FROM range(10000)")


def test_the_time_limit_covers_fetching(imported_store, monkeypatch):
    """A clock that moves 10 s per look: the fetch loop stops at the 25 s limit, not only the query."""
    import time

    store = Store(imported_store[0])
    ticks = itertools.count(0, 10)
    monkeypatch.setattr(time, "monotonic", lambda: float(next(ticks)))
    with pytest.raises(ClipevalError, match="stopped after 25 s"):
        store.read_only_query("SELECT * FROM range(100000)", max_rows=100_000, timeout_s=25)
