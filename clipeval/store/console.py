"""The SQL console: what a reader may run, and how it is kept from changing anything.

Three layers, each enough on its own for the cases it covers:
1. the statement is parsed by DuckDB itself and judged by ALLOW-lists: statement types (SELECT
   forms, EXPLAIN of one, PRAGMAs named below), query node types (a data-modifying CTE, `WITH d AS
   (DELETE ...)`, is a DELETE node and is refused), table functions named below, and scalar,
   aggregate and window functions that DuckDB ships, less the few that change state;
2. it runs on a read-only connection whose configuration forbids file, URL and extension access,
   bounds DuckDB's memory (READ_CONFIG) and is frozen (SET cannot undo it), inside a transaction
   that is always rolled back;
3. its result is capped in rows and in bytes: inside the query each cell is cut to a length, so no
   single value larger than that reaches Python, and the rows are fetched in chunks that stop at the
   byte cap; the whole round trip, fetching included, stops at a time limit.
"""

from __future__ import annotations

import json
import re
import threading
import time

import duckdb
import pandas as pd

from clipeval.errors import ClipevalError
from clipeval.store.connection import READ_CONFIG

READ_ONLY_PRAGMAS = frozenset(
    {
        "table_info",
        "show",
        "show_tables",
        "show_tables_expanded",
        "database_size",
        "storage_info",
        "version",
        "functions",
        "database_list",
        "collations",
        "platform",
        "metadata_info",
        "user_agent",
    }
)

# table functions that only read the store's catalogue or generate values
ALLOWED_TABLE_FUNCTIONS = frozenset(
    {
        "range",
        "generate_series",
        "unnest",
        "repeat",
        "json_each",
        "json_tree",
        "summary",
        "duckdb_tables",
        "duckdb_columns",
        "duckdb_views",
        "duckdb_constraints",
        "duckdb_indexes",
        "duckdb_schemas",
        "duckdb_types",
        "duckdb_functions",
        "duckdb_keywords",
        "duckdb_databases",
        "duckdb_sequences",
        "duckdb_dependencies",
        "pragma_table_info",
        "pragma_show",
        "pragma_database_size",
        "pragma_storage_info",
        "pragma_version",
        "pragma_metadata_info",
        "pragma_collations",
        "pragma_platform",
        "pragma_user_agent",
    }
)

# query nodes a reading statement is built from (DELETE_QUERY_NODE, INSERT_QUERY_NODE, ... are not)
ALLOWED_QUERY_NODES = frozenset({"SELECT_NODE", "SET_OPERATION_NODE", "RECURSIVE_CTE_NODE", "CTE_NODE"})

# column types whose values have a fixed, small size: every other type is capped per cell
FIXED_SIZE_TYPES = frozenset(
    {
        "BOOLEAN",
        "TINYINT",
        "SMALLINT",
        "INTEGER",
        "BIGINT",
        "HUGEINT",
        "UTINYINT",
        "USMALLINT",
        "UINTEGER",
        "UBIGINT",
        "UHUGEINT",
        "FLOAT",
        "DOUBLE",
        "DATE",
        "TIME",
        "TIME WITH TIME ZONE",
        "TIMESTAMP",
        "TIMESTAMP_S",
        "TIMESTAMP_MS",
        "TIMESTAMP_NS",
        "TIMESTAMP WITH TIME ZONE",
        "INTERVAL",
        "UUID",
        "NULL",
    }
)
CUT_COLUMN = "__clipeval_cut_cells"

# built-in functions that change state (sequences, the random seed) or read the environment
STATEFUL_FUNCTIONS = frozenset({"nextval", "currval", "setseed", "getenv", "getvariable"})

_scalar_allow: frozenset | None = None


def allowed_functions() -> frozenset:
    """Scalar, aggregate, window and macro functions DuckDB ships, less STATEFUL_FUNCTIONS."""
    global _scalar_allow
    if _scalar_allow is None:
        con = duckdb.connect(":memory:")
        try:
            names = {
                r[0].lower()
                for r in con.execute(
                    "SELECT DISTINCT function_name FROM duckdb_functions() WHERE function_type IN "
                    "('scalar', 'aggregate', 'window', 'macro')"
                ).fetchall()
            }
        finally:
            con.close()
        _scalar_allow = frozenset((names | {"unnest"}) - STATEFUL_FUNCTIONS)  # unnest([...]) in a SELECT list
    return _scalar_allow


def _strip_leading(sql: str) -> str:
    """`sql` without leading whitespace and comments (-- line and /* block */)."""
    s = sql
    while True:
        t = s.lstrip()
        if t.startswith("--"):
            t = t.split("\n", 1)[1] if "\n" in t else ""
        elif t.startswith("/*"):
            t = t.split("*/", 1)[1] if "*/" in t else ""
        if t == s:
            return s
        s = t


def _check_tree(sql: str) -> None:
    """Judge a SELECT-type statement from DuckDB's own parse tree (json_serialize_sql)."""
    con = duckdb.connect(":memory:")
    try:
        tree = json.loads(con.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()[0])
    finally:
        con.close()
    if tree.get("error"):
        raise ClipevalError(
            f"the console cannot check this statement, so it does not run it: {tree.get('error_message', '')}"
        )
    scalars = allowed_functions()
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        kind = str(node.get("type", ""))
        if kind.endswith("_NODE") and kind not in ALLOWED_QUERY_NODES:
            what = kind.removesuffix("_QUERY_NODE").removesuffix("_NODE")
            raise ClipevalError(
                f"the console is read-only: a {what} inside the query (e.g. a data-modifying "
                "WITH ... AS (DELETE/INSERT/UPDATE ...)) is refused"
            )
        if kind == "TABLE_FUNCTION":
            fn = node.get("function") or {}
            name = str(fn.get("function_name", "")).lower()
            if name not in ALLOWED_TABLE_FUNCTIONS:
                raise ClipevalError(
                    f"the console reads the run store only: the table function {name}() is not "
                    f"among those allowed ({', '.join(sorted(ALLOWED_TABLE_FUNCTIONS))})"
                )
            # the function's own fields (its arguments: a subquery may hide another table function),
            # not the function node itself, which would be judged as a scalar function
            stack.extend(fn.values())
            stack.extend(v for k, v in node.items() if k != "function")
            continue
        if node.get("class") in ("FUNCTION", "WINDOW", "AGGREGATE") and "function_name" in node:
            name = str(node["function_name"]).lower()
            if name not in scalars:
                raise ClipevalError(
                    f"the console does not call {name}(): only DuckDB's built-in functions that "
                    "compute values are allowed"
                )
        if kind == "BASE_TABLE" and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]*", str(node.get("table_name", ""))):
            raise ClipevalError(
                f"the console reads the run store only: {node.get('table_name')!r} looks like a file or URL"
            )
        stack.extend(node.values())


def check_read_only_sql(sql: str, _depth: int = 0):
    """The single statement in `sql` if it only reads the store (SELECT / WITH / FROM / DESCRIBE /
    SHOW / SUMMARIZE / EXPLAIN of those / an allowed PRAGMA); otherwise ClipevalError naming why."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as e:
        raise ClipevalError(str(e).strip()) from e
    if not statements:
        raise ClipevalError("no SQL statement given")
    if len(statements) > 1:
        raise ClipevalError(f"one statement at a time, please ({len(statements)} given)")
    st = statements[0]
    kind = st.type
    if kind == duckdb.StatementType.SELECT:
        _check_tree(st.query)
        return st
    if kind == duckdb.StatementType.EXPLAIN:
        body = _strip_leading(st.query)
        inner = re.sub(r"^explain\s+(analy[sz]e\s+)?", "", body, flags=re.IGNORECASE)
        if inner == body or _depth > 2:
            raise ClipevalError("the console cannot check this EXPLAIN statement, so it does not run it")
        check_read_only_sql(inner, _depth + 1)  # EXPLAIN ANALYZE executes its statement: it must read only
        return st
    if kind == duckdb.StatementType.PRAGMA:
        m = re.match(r"pragma\s+(\w+)", _strip_leading(st.query), flags=re.IGNORECASE)
        if m and m.group(1).lower() in READ_ONLY_PRAGMAS:
            return st
        raise ClipevalError(f"only read-only PRAGMAs are allowed here ({', '.join(sorted(READ_ONLY_PRAGMAS))})")
    raise ClipevalError(
        f"the console is read-only: {kind.name} statements are refused "
        "(SELECT, WITH, FROM, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN and read-only PRAGMAs are allowed)"
    )


def _capped(column: str, type_name: str, cap: int) -> tuple[str, str | None]:
    """(the column with its cells capped at `cap` characters, an expression true where one was cut)."""
    if type_name in FIXED_SIZE_TYPES or type_name.startswith(("DECIMAL", "ENUM")):
        return column, None
    if type_name in ("VARCHAR", "JSON"):
        too_long = f"length({column}::VARCHAR) > {cap}"
        return f"CASE WHEN {too_long} THEN left({column}::VARCHAR, {cap}) || '…' ELSE {column} END", too_long
    too_long = f"length({column}::VARCHAR) > {cap}"
    return f"CASE WHEN {too_long} THEN NULL ELSE {column} END", too_long


def _capped_query(sql: str, types: list[str], cap: int) -> str:
    """`sql` wrapped so that no cell longer than `cap` characters leaves DuckDB, with a last column
    counting the cells cut in each row (the query's own columns are renamed by position, so duplicate
    names stay apart; the newlines keep a trailing -- comment from swallowing the closing parenthesis)."""
    names = [f"c{i}" for i in range(len(types))]
    capped = [_capped(c, t, cap) for c, t in zip(names, types)]
    flags = " + ".join(f"coalesce({flag}, false)::INTEGER" for _, flag in capped if flag) or "0"
    return (
        f"SELECT {', '.join(expr for expr, _ in capped)}, {flags} AS {CUT_COLUMN} "
        f"FROM (\n{sql}\n) AS q({', '.join(names)})"
    )


class ConsoleMixin:
    READ_ONLY_PRAGMAS = READ_ONLY_PRAGMAS

    @staticmethod
    def check_read_only_sql(sql: str):
        return check_read_only_sql(sql)

    def read_only_query(
        self,
        sql: str,
        max_rows: int = 10_000,
        timeout_s: float = 30.0,
        max_bytes: int = 64 * 2**20,
        max_cell_chars: int = 100_000,
    ) -> tuple[pd.DataFrame, str]:
        """Run one reading statement (see `check_read_only_sql`) on a read-only connection, inside a
        transaction that is always rolled back, stopped after `timeout_s` from start to the last row
        fetched (a runaway join must not hang the app). Text cells are cut to `max_cell_chars`
        characters and other cells longer than that as text are emptied, inside the query. Returns
        (the rows, up to max_rows and about max_bytes in memory; why it was cut, or '' when it holds
        every row whole)."""
        statement = check_read_only_sql(sql)
        deadline = time.monotonic() + timeout_s
        with self.reading() as con:
            cur = con.cursor()
            cur.execute("BEGIN TRANSACTION")
            timer = threading.Timer(timeout_s, cur.interrupt)
            timer.start()
            try:
                n_cols = None
                if statement.type == duckdb.StatementType.SELECT:
                    rel = cur.sql(statement.query)  # binds the query (names and types) without running it
                    cols, n_cols = list(rel.columns), len(rel.columns)
                    statement = check_read_only_sql(
                        _capped_query(statement.query, [str(t) for t in rel.types], max_cell_chars)
                    )
                cur.execute(statement)
                if cur.description is None:
                    return pd.DataFrame(), ""
                if n_cols is None:
                    cols = [d[0] for d in cur.description]
                frames, n, size, cut = [], 0, 0, ""
                # the first chunk fits the byte cap even if every capped cell is full
                step = int(max(1, min(100, max_bytes // (4 * max_cell_chars * max(1, len(cols))))))
                while True:
                    if time.monotonic() > deadline:
                        raise duckdb.InterruptException("time limit")
                    rows = cur.fetchmany(min(step, max_rows + 1 - n))
                    if not rows:
                        break
                    chunk = pd.DataFrame(rows, columns=range(len(rows[0])))
                    size += int(chunk.memory_usage(deep=True).sum())
                    frames.append(chunk)
                    n += len(rows)
                    if n > max_rows:
                        cut = f"cut at {max_rows:,} rows: more exist"
                        break
                    if size > max_bytes:
                        cut = f"cut at {size / 2**20:.0f} MB of results (limit {max_bytes / 2**20:.0f} MB): more may exist"
                        break
                    # the next chunk about fills what is left of the byte cap (at least one row)
                    step = int(min(5_000, max(1, (max_bytes - size) / max(1.0, size / n) + 1)))
                frame = (
                    pd.concat(frames, ignore_index=True).iloc[:max_rows]
                    if frames
                    else pd.DataFrame(columns=range(len(cols) + (n_cols is not None)))
                )
                if n_cols is not None:
                    n_cut = int(frame.pop(n_cols).sum())
                    if n_cut:
                        cut = "; ".join(
                            x
                            for x in (
                                cut,
                                f"{n_cut:,} cell(s) longer than {max_cell_chars:,} characters "
                                "cut (text, ending in '…') or left empty (other types)",
                            )
                            if x
                        )
                if len(set(cols)) < len(cols):  # keep duplicate column names apart for display
                    frame.columns = [f"{c} ({i})" if cols.count(c) > 1 else str(c) for i, c in enumerate(cols)]
                else:
                    frame.columns = [str(c) for c in cols]
                return frame, cut
            except duckdb.InterruptException as e:
                raise ClipevalError(f"the query was stopped after {timeout_s:.0f} s") from e
            except duckdb.OutOfMemoryException as e:
                raise ClipevalError(
                    f"the query needs more memory than a store read may use "
                    f"({READ_CONFIG['memory_limit']}); narrow it (WHERE, LIMIT) or aggregate less "
                    f"into one value"
                ) from e
            except duckdb.Error as e:
                raise ClipevalError(str(e).strip()) from e
            finally:
                timer.cancel()
                try:
                    cur.execute("ROLLBACK")
                except duckdb.Error:
                    pass
                cur.close()

    @staticmethod
    def example_queries() -> dict[str, str]:
        """Starting points for the SQL console."""
        return {
            "Runs and their status": "SELECT run_id, name, status, created_at, n_images, peak_rss_mb\nFROM runs\n"
            "ORDER BY created_at DESC",
            "Tables of the store": "SHOW TABLES",
            "Neurons per layer": "SELECT run_id, layer, count(*) AS neurons, avg(similarity) AS mean_similarity\n"
            "FROM neurons\nGROUP BY ALL\nORDER BY run_id, layer",
            "Most frequent labels": "SELECT label, count(*) AS neurons\nFROM neurons\nGROUP BY label\n"
            "ORDER BY neurons DESC\nLIMIT 20",
            "Evaluations": "SELECT run_id, evaluator, status, wall_s, n_concepts, error\nFROM evaluations\n"
            "ORDER BY run_id, evaluator",
            "ES cosines of the top-5 images (real labels)": "SELECT s.layer, s.unit, s.label, s.rank, s.image_id, round(s.raw, 3) AS cosine\n"
            "FROM eval_scores s JOIN evaluations e USING (eval_id)\n"
            "WHERE e.evaluator = 'es' AND s.variant = 'real' AND s.kind = 'top'\n"
            "ORDER BY s.layer, s.unit, s.rank\nLIMIT 100",
            "Human verdicts per rater": "SELECT run_id, rater, count(*) AS answers,\n"
            "       count(DISTINCT (layer, unit)) AS neurons, avg(verdict::INT) AS yes_share\n"
            "FROM human_verdicts\nGROUP BY ALL\nORDER BY run_id, rater",
            "Probe images by source and licence": "SELECT source, license, count(*) AS images\nFROM probe_images\n"
            "GROUP BY ALL\nORDER BY images DESC",
        }
