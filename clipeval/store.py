"""The run store: one DuckDB file. The ONLY module with SQL in it.

Tables
  runs            one row per run: config JSON + hash, status, timings, models used
  layers          per run and layer: output shape, number of units
  neurons         per run, layer, unit: CLIP-Dissect label and its similarity; dead (constant activation
                  over the probe: no label, no images) and n_negatives (contrast images: low + random)
  runner_ups      per neuron: the best concepts in order (rank 1 is the label)
  neuron_images   per neuron: images with their activation; kind 'top' (top-k), 'low' (lowest),
                  'random' (random, not among the most active), 'level' (spread over activation levels)
  histograms      per neuron: activation histogram bins
  probe_images    per probe set (fingerprint): path, source, licence, known label, JPEG thumbnail
  concepts        per concept set (content hash): the concepts in order
  evaluations     one row per evaluator pass over a run: settings, models, wall time, status
  eval_scores     per evaluation: raw per-image score for each (neuron, variant, image)
  eval_neurons    per evaluation: per-neuron values that are not per-image (contrast ROC-AUC)
  human_verdicts  append-only yes/no judgments per neuron and rater; the latest per rater counts
  label_sources   per run: other labellers' labels put beside the run's (another run, the original
                  CLIP-Dissect's descriptions.csv, MILAN, NetDissect's tally CSV), with their origin
  source_labels   per source: every label of the file (layer names after the layer map), with its
                  own score (CLIP-Dissect similarity, NetDissect IoU; none for MILAN)
  source_evals    per source and evaluator: one pass of the run's evaluator over the source's labels
  source_scores   per source evaluation: raw per-image scores, like eval_scores

Writes that belong together happen in one transaction, and a run or evaluation is flagged
'complete' only in the transaction that writes its last rows: readers never see half a result.
"""

from __future__ import annotations

import json
import os
import re
import socket
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pandas as pd

from clipeval.errors import ClipevalError

SCHEMA_VERSION = 1
DEFAULT_DB = Path(os.environ.get("CLIPEVAL_DB", Path(__file__).resolve().parents[1] / "data" / "clipeval.duckdb"))

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, name TEXT, kind TEXT, config_json TEXT, config_hash TEXT,
    status TEXT, pid INTEGER, host TEXT, created_at TIMESTAMP, finished_at TIMESTAMP,
    probe_fingerprint TEXT, concept_hash TEXT, n_images INTEGER, n_skipped_images INTEGER,
    models_json TEXT, timings_json TEXT, peak_rss_mb DOUBLE, error TEXT);
CREATE TABLE IF NOT EXISTS layers (
    run_id TEXT, layer TEXT, position INTEGER, shape TEXT, n_units INTEGER, PRIMARY KEY (run_id, layer));
CREATE TABLE IF NOT EXISTS neurons (
    run_id TEXT, layer TEXT, unit INTEGER, label TEXT, similarity DOUBLE, dead BOOLEAN DEFAULT false,
    n_negatives INTEGER, PRIMARY KEY (run_id, layer, unit));
CREATE TABLE IF NOT EXISTS runner_ups (
    run_id TEXT, layer TEXT, unit INTEGER, rank INTEGER, concept TEXT, score DOUBLE);
CREATE TABLE IF NOT EXISTS neuron_images (
    run_id TEXT, layer TEXT, unit INTEGER, kind TEXT, rank INTEGER, image_id INTEGER, activation DOUBLE);
CREATE TABLE IF NOT EXISTS histograms (
    run_id TEXT, layer TEXT, unit INTEGER, bin INTEGER, lo DOUBLE, hi DOUBLE, count INTEGER);
CREATE TABLE IF NOT EXISTS probe_images (
    probe_fingerprint TEXT, image_id INTEGER, path TEXT, source TEXT, license TEXT, label TEXT,
    thumbnail BLOB, PRIMARY KEY (probe_fingerprint, image_id));
CREATE TABLE IF NOT EXISTS concepts (
    concept_hash TEXT, idx INTEGER, concept TEXT, PRIMARY KEY (concept_hash, idx));
CREATE TABLE IF NOT EXISTS concept_sets (concept_hash TEXT PRIMARY KEY, name TEXT, n INTEGER);
CREATE TABLE IF NOT EXISTS evaluations (
    eval_id TEXT PRIMARY KEY, run_id TEXT, evaluator TEXT, config_json TEXT, status TEXT,
    created_at TIMESTAMP, finished_at TIMESTAMP, wall_s DOUBLE, models_json TEXT, n_concepts INTEGER,
    constant_label TEXT, error TEXT);
CREATE TABLE IF NOT EXISTS eval_scores (
    eval_id TEXT, layer TEXT, unit INTEGER, variant TEXT, kind TEXT, rank INTEGER, image_id INTEGER,
    label TEXT, raw DOUBLE);
CREATE TABLE IF NOT EXISTS eval_neurons (
    eval_id TEXT, layer TEXT, unit INTEGER, variant TEXT, metric TEXT, value DOUBLE);
CREATE TABLE IF NOT EXISTS human_verdicts (
    run_id TEXT, layer TEXT, unit INTEGER, rater TEXT, verdict BOOLEAN, source TEXT, created_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS label_sources (
    source_id TEXT PRIMARY KEY, run_id TEXT, name TEXT, kind TEXT, origin TEXT, settings_json TEXT,
    score_name TEXT, n_labels INTEGER, created_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS source_labels (
    source_id TEXT, layer TEXT, unit INTEGER, label TEXT, score DOUBLE, detail TEXT);
CREATE TABLE IF NOT EXISTS source_evals (
    source_eval_id TEXT PRIMARY KEY, source_id TEXT, run_id TEXT, evaluator TEXT, config_json TEXT, status TEXT,
    created_at TIMESTAMP, wall_s DOUBLE, models_json TEXT, n_concepts INTEGER, error TEXT);
CREATE TABLE IF NOT EXISTS source_scores (
    source_eval_id TEXT, layer TEXT, unit INTEGER, variant TEXT, kind TEXT, rank INTEGER, image_id INTEGER,
    label TEXT, raw DOUBLE);
"""
# columns added after a table was first released: stores written before get them (with their defaults)
MIGRATIONS = """
ALTER TABLE neurons ADD COLUMN IF NOT EXISTS dead BOOLEAN DEFAULT false;
ALTER TABLE neurons ADD COLUMN IF NOT EXISTS n_negatives INTEGER;
"""

RUN_TABLES = ("layers", "neurons", "runner_ups", "neuron_images", "histograms")


def now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def pid_alive(pid: int | None, host: str | None) -> bool:
    if pid is None or pd.isna(pid) or host != socket.gethostname():
        return False
    try:
        os.kill(int(pid), 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


class Store:
    """A DuckDB run store. Use one per process; `cursor()` gives a cheap per-query cursor."""

    def __init__(self, path: str | os.PathLike = DEFAULT_DB, read_only: bool = False):
        self.path = Path(path)
        if read_only and not self.path.exists():
            raise ClipevalError(f"run store {self.path} does not exist yet; make a run first (clipeval demo)")
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.con = duckdb.connect(str(self.path), read_only=read_only)
        except duckdb.IOException as e:
            msg = str(e)
            if "lock" in msg.lower():
                raise ClipevalError(
                    f"the run store {self.path} is locked by another process (an open app or another clipeval "
                    f"command?). Stop it, or use another store with --db. ({msg.splitlines()[0]})") from e
            raise ClipevalError(f"{self.path} is not a DuckDB run store: {msg.splitlines()[0]}") from e
        except duckdb.Error as e:
            raise ClipevalError(f"{self.path} is not a DuckDB run store: {str(e).splitlines()[0]}") from e
        self.read_only = read_only
        if not read_only:
            self.con.execute(SCHEMA)
            self.con.execute(MIGRATIONS)
            self.con.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])

    def close(self) -> None:
        self.con.close()

    def has_table(self, name: str) -> bool:
        """Whether the store has this table (a store made by an older version, opened read-only, may
        lack the newer tables: they are created only when it is opened for writing)."""
        return bool(self.cursor().execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ?",
                                          [name]).fetchall()[0][0])

    def cursor(self) -> duckdb.DuckDBPyConnection:
        return self.con.cursor()

    def df(self, sql: str, params=None) -> pd.DataFrame:
        return self.cursor().execute(sql, params or []).df()

    @contextmanager
    def transaction(self):
        cur = self.cursor()
        cur.execute("BEGIN TRANSACTION")
        try:
            yield cur
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise

    # ---------------------------------------------------------------- runs
    def start_run(self, run_id: str, name: str, kind: str, config_json: str, config_hash: str) -> None:
        """Record a run as 'running' (so a crash leaves it visibly interrupted, never complete)."""
        with self.transaction() as cur:
            for table in RUN_TABLES:
                cur.execute(f"DELETE FROM {table} WHERE run_id = ?", [run_id])
            cur.execute("DELETE FROM runs WHERE run_id = ?", [run_id])
            cur.execute("INSERT INTO runs (run_id, name, kind, config_json, config_hash, status, pid, host, created_at)"
                        " VALUES (?, ?, ?, ?, ?, 'running', ?, ?, ?)",
                        [run_id, name, kind, config_json, config_hash, os.getpid(), socket.gethostname(), now()])

    def fail_run(self, run_id: str, status: str, error: str) -> None:
        self.cursor().execute("UPDATE runs SET status = ?, error = ?, pid = NULL WHERE run_id = ?",
                              [status, error[:2000], run_id])

    def finish_run(self, run_id: str, *, layers: pd.DataFrame, neurons: pd.DataFrame, runner_ups: pd.DataFrame,
                   neuron_images: pd.DataFrame, histograms: pd.DataFrame, meta: dict) -> None:
        """Write every result row of a run and flag it complete, all in one transaction."""
        with self.transaction() as cur:
            for table, frame in (("layers", layers), ("neurons", neurons), ("runner_ups", runner_ups),
                                 ("neuron_images", neuron_images), ("histograms", histograms)):
                if frame is not None and len(frame):
                    cur.register("frame", frame)
                    cols = ", ".join(frame.columns)
                    cur.execute(f"INSERT INTO {table} (run_id, {cols}) SELECT ?, {cols} FROM frame", [meta["run_id"]])
                    cur.unregister("frame")
            cur.execute(
                "UPDATE runs SET status = 'complete', pid = NULL, finished_at = ?, probe_fingerprint = ?, concept_hash = ?,"
                " n_images = ?, n_skipped_images = ?, models_json = ?, timings_json = ?, peak_rss_mb = ?, error = NULL"
                " WHERE run_id = ?",
                [now(), meta.get("probe_fingerprint"), meta.get("concept_hash"), meta.get("n_images"),
                 meta.get("n_skipped_images", 0), json.dumps(meta.get("models", {})),
                 json.dumps(meta.get("timings", {})), meta.get("peak_rss_mb"), meta["run_id"]])

    def get_meta(self, key: str) -> str | None:
        rows = self.cursor().execute("SELECT value FROM meta WHERE key = ?", [key]).fetchall()
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        self.cursor().execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [key, value])

    def set_run_timings(self, run_id: str, timings: dict) -> None:
        self.cursor().execute("UPDATE runs SET timings_json = ? WHERE run_id = ?", [json.dumps(timings), run_id])

    def runs(self) -> pd.DataFrame:
        """All runs, newest first; a 'running' run whose process is gone shows as 'interrupted'."""
        df = self.df("SELECT r.*, (SELECT count(*) FROM neurons n WHERE n.run_id = r.run_id) AS n_neurons "
                     "FROM runs r ORDER BY created_at DESC")
        if len(df):
            dead = (df["status"] == "running") & ~df.apply(lambda r: pid_alive(r["pid"], r["host"]), axis=1)
            df.loc[dead, "status"] = "interrupted"
        return df

    def run(self, run_id: str) -> dict:
        """One run by id or unique id prefix or name."""
        df = self.runs()
        hit = df[(df["run_id"] == run_id) | (df["name"] == run_id)]
        if hit.empty:
            hit = df[df["run_id"].str.startswith(run_id)]
        if hit.empty:
            known = ", ".join(f"{r.run_id} ({r.name})" for r in df.itertuples()) or "none yet"
            raise ClipevalError(f"no run {run_id!r} in {self.path}; runs: {known}")
        if len(hit) > 1:
            raise ClipevalError(f"{run_id!r} matches several runs: {', '.join(hit['run_id'])}")
        return hit.iloc[0].to_dict()

    def complete_run(self, run_id: str) -> dict:
        run = self.run(run_id)
        if run["status"] != "complete":
            raise ClipevalError(f"run {run['run_id']} is {run['status']}, not complete; finish it by running "
                                "the same `clipeval dissect` again, or remove it with `clipeval rm`")
        return run

    def rename_run(self, run_id: str, name: str) -> str:
        """Give a run a new display name (its id, the hash of its settings, stays); returns the name."""
        from clipeval.runnames import check_name

        name = check_name(name)
        run_id = self.run(run_id)["run_id"]
        self.cursor().execute("UPDATE runs SET name = ? WHERE run_id = ?", [name, run_id])
        return name

    def delete_run(self, run_id: str) -> None:
        with self.transaction() as cur:
            evals = [r[0] for r in cur.execute("SELECT eval_id FROM evaluations WHERE run_id = ?", [run_id]).fetchall()]
            for table in ("eval_scores", "eval_neurons"):
                cur.execute(f"DELETE FROM {table} WHERE eval_id IN (SELECT unnest(?::TEXT[]))", [evals])
            for table in (*RUN_TABLES, "evaluations", "human_verdicts", "runs"):
                cur.execute(f"DELETE FROM {table} WHERE run_id = ?", [run_id])
            self._delete_sources(cur, "run_id = ?", [run_id])

    # ---------------------------------------------------------------- probe and concepts
    def has_probe(self, fingerprint: str) -> bool:
        return bool(self.cursor().execute("SELECT count(*) FROM probe_images WHERE probe_fingerprint = ?",
                                          [fingerprint]).fetchall()[0][0])

    def put_probe(self, fingerprint: str, images: pd.DataFrame) -> None:
        """images: image_id, path, source, license, label, thumbnail (bytes)."""
        with self.transaction() as cur:
            cur.execute("DELETE FROM probe_images WHERE probe_fingerprint = ?", [fingerprint])
            cur.register("frame", images)
            cur.execute("INSERT INTO probe_images SELECT ?, image_id, path, source, license, label, thumbnail FROM frame",
                        [fingerprint])
            cur.unregister("frame")

    def put_concepts(self, concept_hash: str, name: str, concepts) -> None:
        with self.transaction() as cur:
            if cur.execute("SELECT count(*) FROM concept_sets WHERE concept_hash = ?", [concept_hash]).fetchall()[0][0]:
                return
            frame = pd.DataFrame({"idx": range(len(concepts)), "concept": list(concepts)})
            cur.register("frame", frame)
            cur.execute("INSERT INTO concepts SELECT ?, idx, concept FROM frame", [concept_hash])
            cur.unregister("frame")
            cur.execute("INSERT INTO concept_sets VALUES (?, ?, ?)", [concept_hash, name, len(concepts)])

    def concepts(self, concept_hash: str) -> list[str]:
        return [r[0] for r in self.cursor().execute(
            "SELECT concept FROM concepts WHERE concept_hash = ? ORDER BY idx", [concept_hash]).fetchall()]

    def thumbnails(self, probe_fingerprint: str, image_ids) -> dict[int, bytes]:
        rows = self.cursor().execute(
            "SELECT image_id, thumbnail FROM probe_images WHERE probe_fingerprint = ? AND image_id IN "
            "(SELECT unnest(?::INTEGER[]))", [probe_fingerprint, [int(i) for i in image_ids]]).fetchall()
        return {int(i): bytes(t) for i, t in rows}

    def probe_images(self, probe_fingerprint: str, with_thumbnails: bool = False) -> pd.DataFrame:
        cols = "image_id, path, source, license, label" + (", thumbnail" if with_thumbnails else "")
        return self.df(f"SELECT {cols} FROM probe_images WHERE probe_fingerprint = ? ORDER BY image_id",
                       [probe_fingerprint])

    # ---------------------------------------------------------------- run contents
    def layers(self, run_id: str) -> pd.DataFrame:
        return self.df("SELECT layer, shape, n_units FROM layers WHERE run_id = ? ORDER BY position", [run_id])

    def neurons(self, run_id: str, layer: str | None = None) -> pd.DataFrame:
        # a store written before these columns and opened read-only (no migration) reads as all alive
        extra = ("coalesce(n.dead, false) AS dead, n.n_negatives" if self._neuron_columns() >= {"dead", "n_negatives"}
                 else "false AS dead, NULL::INTEGER AS n_negatives")
        sql = (f"SELECT n.layer, n.unit, n.label, n.similarity, {extra} "
               "FROM neurons n JOIN layers l USING (run_id, layer) "
               "WHERE n.run_id = ?" + (" AND n.layer = ?" if layer else "") + " ORDER BY l.position, n.unit")
        return self.df(sql, [run_id, layer] if layer else [run_id])

    def _neuron_columns(self) -> set[str]:
        return {r[0] for r in self.cursor().execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'neurons'").fetchall()}

    def runner_ups(self, run_id: str, layer: str, unit: int) -> pd.DataFrame:
        return self.df("SELECT rank, concept, score FROM runner_ups WHERE run_id = ? AND layer = ? AND unit = ? "
                       "ORDER BY rank", [run_id, layer, unit])

    def all_runner_ups(self, run_id: str) -> pd.DataFrame:
        return self.df("SELECT layer, unit, rank, concept, score FROM runner_ups WHERE run_id = ? "
                       "ORDER BY layer, unit, rank", [run_id])

    def neuron_images(self, run_id: str, kinds=("top",), layer: str | None = None, unit: int | None = None) -> pd.DataFrame:
        sql = ("SELECT layer, unit, kind, rank, image_id, activation FROM neuron_images WHERE run_id = ? "
               "AND kind IN (SELECT unnest(?::TEXT[]))")
        params: list = [run_id, list(kinds)]
        if layer is not None:
            sql += " AND layer = ?"
            params.append(layer)
        if unit is not None:
            sql += " AND unit = ?"
            params.append(int(unit))
        return self.df(sql + " ORDER BY layer, unit, kind, rank", params)

    def histogram(self, run_id: str, layer: str, unit: int) -> pd.DataFrame:
        return self.df("SELECT bin, lo, hi, count FROM histograms WHERE run_id = ? AND layer = ? AND unit = ? "
                       "ORDER BY bin", [run_id, layer, unit])

    # ---------------------------------------------------------------- evaluations
    def evaluation_status(self, eval_id: str) -> str | None:
        rows = self.cursor().execute("SELECT status FROM evaluations WHERE eval_id = ?", [eval_id]).fetchall()
        return rows[0][0] if rows else None

    def record_evaluation(self, eval_id: str, run_id: str, evaluator: str, config_json: str, *, status: str,
                          scores: pd.DataFrame | None = None, wall_s: float | None = None, models: dict | None = None,
                          n_concepts: int | None = None, constant_label: str = "", error: str = "") -> None:
        """Replace the evaluation `eval_id` with its scores and final status, in one transaction
        (status 'complete', or 'unavailable' / 'failed' with the reason and no scores)."""
        with self.transaction() as cur:
            cur.execute("DELETE FROM eval_scores WHERE eval_id = ?", [eval_id])
            cur.execute("DELETE FROM evaluations WHERE eval_id = ?", [eval_id])
            if scores is not None and len(scores):
                frame = scores[["layer", "unit", "variant", "kind", "rank", "image_id", "label", "raw"]]
                cur.register("frame", frame)
                cur.execute("INSERT INTO eval_scores SELECT ?, layer, unit, variant, kind, rank, image_id, label, raw "
                            "FROM frame", [eval_id])
                cur.unregister("frame")
            cur.execute("INSERT INTO evaluations VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [eval_id, run_id, evaluator, config_json, status, now(), now(), wall_s,
                         json.dumps(models or {}), n_concepts, constant_label, error or None])

    def evaluations(self, run_id: str | None = None) -> pd.DataFrame:
        sql = "SELECT * FROM evaluations" + (" WHERE run_id = ?" if run_id else "") + " ORDER BY finished_at DESC"
        return self.df(sql, [run_id] if run_id else [])

    def latest_evaluations(self, run_id: str) -> pd.DataFrame:
        """Per evaluator, its newest evaluation of the run (complete or not: the app shows why one is missing)."""
        return self.df("SELECT * FROM evaluations WHERE run_id = ? "
                       "QUALIFY row_number() OVER (PARTITION BY evaluator ORDER BY status = 'complete' DESC, "
                       "finished_at DESC) = 1 ORDER BY evaluator", [run_id])

    def eval_scores(self, eval_id: str, layer: str | None = None, unit: int | None = None) -> pd.DataFrame:
        sql = "SELECT layer, unit, variant, kind, rank, image_id, label, raw FROM eval_scores WHERE eval_id = ?"
        params: list = [eval_id]
        if layer is not None:
            sql += " AND layer = ? AND unit = ?"
            params += [layer, int(unit)]
        return self.df(sql + " ORDER BY layer, unit, variant, kind, rank", params)

    def delete_evaluation(self, eval_id: str) -> None:
        with self.transaction() as cur:
            cur.execute("DELETE FROM eval_scores WHERE eval_id = ?", [eval_id])
            cur.execute("DELETE FROM evaluations WHERE eval_id = ?", [eval_id])

    # ---------------------------------------------------------------- human verdicts
    def add_human_verdicts(self, run_id: str, verdicts: pd.DataFrame, source: str) -> int:
        """Append (layer, unit, rater, verdict) rows; history is kept, the newest per rater counts."""
        frame = verdicts[["layer", "unit", "rater", "verdict"]].copy()
        frame["unit"] = frame["unit"].astype(int)
        frame["verdict"] = frame["verdict"].astype(bool)
        with self.transaction() as cur:
            cur.register("frame", frame)
            cur.execute("INSERT INTO human_verdicts SELECT ?, layer, unit, rater, verdict, ?, ? FROM frame",
                        [run_id, source, now()])
            cur.unregister("frame")
        return len(frame)

    def human_verdicts(self, run_id: str, rater: str | None = None) -> pd.DataFrame:
        """The current verdict of each rater on each neuron (the newest answer)."""
        sql = ("SELECT layer, unit, rater, verdict, source, created_at FROM human_verdicts WHERE run_id = ?"
               + (" AND rater = ?" if rater else "") +
               " QUALIFY row_number() OVER (PARTITION BY layer, unit, rater ORDER BY created_at DESC) = 1"
               " ORDER BY rater, layer, unit")
        return self.df(sql, [run_id, rater] if rater else [run_id])

    def raters(self, run_id: str) -> list[str]:
        return [r[0] for r in self.cursor().execute(
            "SELECT DISTINCT rater FROM human_verdicts WHERE run_id = ? ORDER BY rater", [run_id]).fetchall()]

    # ---------------------------------------------------------------- queries for the pages
    # Read-only queries the Streamlit pages need (clipeval/ui caches them). Nothing here writes.

    def data_version(self, run_id: str | None = None) -> str:
        """A cheap fingerprint of what the app caches: changes whenever a run (its status or timings
        included), an evaluation, a human verdict or a label source (of `run_id`, or of any run) is
        added, replaced or deleted."""
        where = " WHERE run_id = ?" if run_id else ""
        params = [run_id] * 5 if run_id else []
        row = self.cursor().execute(
            "SELECT (SELECT count(*) || '/' || coalesce(max(created_at)::TEXT, '') || '/' || "
            "        coalesce(max(finished_at)::TEXT, '') || '/' || "
            "        coalesce(md5(string_agg(run_id || status || coalesce(name, '') || coalesce(timings_json, ''), ',' ORDER BY run_id)), '')"
            f"        FROM runs{where}), "
            "       (SELECT count(*) || '/' || coalesce(max(finished_at)::TEXT, '') FROM evaluations"
            f"{where}), "
            f"       (SELECT count(*) || '/' || coalesce(max(created_at)::TEXT, '') FROM human_verdicts{where}), "
            f"       (SELECT count(*) || '/' || coalesce(max(created_at)::TEXT, '') FROM label_sources{where}), "
            f"       (SELECT count(*) || '/' || coalesce(max(created_at)::TEXT, '') FROM source_evals{where})",
            params).fetchall()[0]
        return "|".join(str(x) for x in row)

    def store_overview(self) -> dict:
        """Counts for the app's home page."""
        row = self.cursor().execute(
            "SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM runs WHERE status = 'complete'), "
            "(SELECT count(*) FROM neurons), (SELECT count(*) FROM evaluations WHERE status = 'complete'), "
            "(SELECT count(*) FROM evaluations WHERE status <> 'complete'), "
            "(SELECT count(*) FROM (SELECT DISTINCT run_id, layer, unit, rater FROM human_verdicts)), "
            "(SELECT count(DISTINCT rater) FROM human_verdicts), (SELECT count(*) FROM probe_images), "
            "(SELECT count(*) FROM concept_sets), "
            # automatic references (source 'auto: ...') are counted apart from people
            "(SELECT count(*) FROM (SELECT DISTINCT run_id, layer, unit, rater FROM human_verdicts "
            "  WHERE source LIKE 'auto%')), "
            "(SELECT count(DISTINCT rater) FROM human_verdicts WHERE source LIKE 'auto%')").fetchall()[0]
        keys = ("runs", "complete_runs", "neurons", "evaluations", "evaluations_not_complete", "human_verdicts",
                "raters", "probe_images", "concept_sets", "automatic_verdicts", "automatic_raters")
        return dict(zip(keys, (int(x) for x in row)))

    def neuron_image_details(self, run_id: str, layer: str, unit: int, kinds=("top", "level", "low", "random")
                             ) -> pd.DataFrame:
        """One neuron's stored images of the given kinds with their activation and where each image
        comes from (path, source, licence, known label); thumbnails come separately (`thumbnails`)."""
        return self.df(
            "SELECT ni.kind, ni.rank, ni.image_id, ni.activation, p.path, p.source, p.license, p.label AS image_label "
            "FROM neuron_images ni JOIN runs r USING (run_id) "
            "LEFT JOIN probe_images p ON p.probe_fingerprint = r.probe_fingerprint AND p.image_id = ni.image_id "
            "WHERE ni.run_id = ? AND ni.layer = ? AND ni.unit = ? AND ni.kind IN (SELECT unnest(?::TEXT[])) "
            "ORDER BY ni.kind, ni.rank", [run_id, layer, int(unit), list(kinds)])

    def search_neurons(self, run_id: str, text: str, limit: int = 200) -> pd.DataFrame:
        """Neurons whose label, or one of whose runner-up concepts, contains `text` (case-insensitive).
        Best matches first: the whole text (quality 0), a whole word of it (1: "hot dog" for "dog"), the
        start of a word (2), inside a word (3: "hotdog"); then label before runner-ups, then run order.
        Columns: layer, unit, label, similarity, matched, match_rank (1 = the label), match_quality."""
        q = text.strip().lower()
        word = re.sub(r"([.^$|?*+()\[\]{}\\])", r"\\\1", q)  # RE2 pattern of the literal text
        quality = ("CASE WHEN lower(concept) = ? THEN 0 "
                   "WHEN regexp_matches(lower(concept), '(^|[^[:alnum:]])' || ? || '([^[:alnum:]]|$)') THEN 1 "
                   "WHEN regexp_matches(lower(concept), '(^|[^[:alnum:]])' || ?) THEN 2 ELSE 3 END")
        return self.df(
            "SELECT n.layer, n.unit, n.label, n.similarity, m.concept AS matched, m.rank AS match_rank, "
            "m.quality AS match_quality "
            "FROM neurons n JOIN layers l USING (run_id, layer) "
            f"JOIN (SELECT *, {quality} AS quality FROM (SELECT layer, unit, concept, rank FROM runner_ups "
            "        WHERE run_id = ? AND concept ILIKE '%' || ? || '%' "
            "      UNION ALL SELECT layer, unit, label, 1 FROM neurons WHERE run_id = ? AND label ILIKE '%' || ? || '%') "
            "      QUALIFY row_number() OVER (PARTITION BY layer, unit ORDER BY quality, rank) = 1) m "
            "USING (layer, unit) "
            "WHERE n.run_id = ? ORDER BY m.quality, m.rank, l.position, n.unit LIMIT ?",
            [q, word, word, run_id, q, run_id, q, run_id, int(limit)])

    def label_counts(self, run_id: str, layer: str | None = None, limit: int = 25) -> pd.DataFrame:
        """The most frequent labels (of one layer, or of the whole run) with how many neurons carry them."""
        sql = ("SELECT label, count(*) AS neurons, count(*) / sum(count(*)) OVER () AS share, "
               "string_agg(DISTINCT layer, ', ' ORDER BY layer) AS layers FROM neurons WHERE run_id = ? AND label IS NOT NULL"
               + (" AND layer = ?" if layer else "") + " GROUP BY label ORDER BY neurons DESC, label LIMIT ?")
        return self.df(sql, [run_id, layer, int(limit)] if layer else [run_id, int(limit)])

    def annotation_queue(self, run_id: str, rater: str, order: str = "layers", layer: str | None = None,
                         exclude=()) -> pd.DataFrame:
        """Neurons (with top-k images) that `rater` has not judged yet, in annotation order:
        'layers' = layer by layer, unit by unit; 'shuffled' = a fixed pseudo-random order (the same
        for every rater and every session, so stopping and resuming continues where one left off).
        `exclude`: (layer, unit) pairs to leave out (e.g. skipped in this session)."""
        if order not in ("layers", "shuffled"):
            raise ClipevalError(f"order must be 'layers' or 'shuffled', not {order!r}")
        ex = pd.DataFrame(list(exclude), columns=["layer", "unit"]).astype({"layer": str, "unit": "int64"})
        key = "l.position, n.unit" if order == "layers" else "md5(n.layer || ':' || n.unit::TEXT), l.position, n.unit"
        cur = self.cursor()
        cur.register("exclude_frame", ex)
        try:
            return cur.execute(
                "SELECT n.layer, n.unit, n.label, n.similarity FROM neurons n JOIN layers l USING (run_id, layer) "
                "WHERE n.run_id = ?" + (" AND n.layer = ?" if layer else "") +
                " AND EXISTS (SELECT 1 FROM neuron_images i WHERE i.run_id = n.run_id AND i.layer = n.layer "
                "             AND i.unit = n.unit AND i.kind = 'top') "
                " AND NOT EXISTS (SELECT 1 FROM human_verdicts h WHERE h.run_id = n.run_id AND h.layer = n.layer "
                "                 AND h.unit = n.unit AND h.rater = ?) "
                " AND NOT EXISTS (SELECT 1 FROM exclude_frame e WHERE e.layer = n.layer AND e.unit = n.unit) "
                f"ORDER BY {key}", [run_id, *([layer] if layer else []), rater]).df()
        finally:
            cur.unregister("exclude_frame")

    def annotation_progress(self, run_id: str, rater: str, layer: str | None = None) -> dict:
        """How many neurons (with top-k images) there are, how many `rater` has judged, how many 'yes'."""
        lay = " AND n.layer = ?" if layer else ""
        row = self.cursor().execute(
            "WITH todo AS (SELECT n.layer, n.unit FROM neurons n WHERE n.run_id = ?" + lay +
            "   AND EXISTS (SELECT 1 FROM neuron_images i WHERE i.run_id = n.run_id AND i.layer = n.layer "
            "               AND i.unit = n.unit AND i.kind = 'top')), "
            "cur AS (SELECT layer, unit, verdict FROM human_verdicts WHERE run_id = ? AND rater = ? "
            "   QUALIFY row_number() OVER (PARTITION BY layer, unit ORDER BY created_at DESC) = 1) "
            "SELECT (SELECT count(*) FROM todo), count(c.layer), count(*) FILTER (WHERE c.verdict) "
            "FROM todo t JOIN cur c USING (layer, unit)",
            [run_id, *([layer] if layer else []), run_id, rater]).fetchall()[0]
        return {"total": int(row[0]), "judged": int(row[1]), "yes": int(row[2])}

    def rater_history(self, run_id: str, rater: str, limit: int = 20) -> pd.DataFrame:
        """A rater's latest answers, newest first (every answer, history included), with the labels judged."""
        return self.df(
            "SELECT h.created_at, h.layer, h.unit, n.label, h.verdict, h.source FROM human_verdicts h "
            "LEFT JOIN neurons n USING (run_id, layer, unit) WHERE h.run_id = ? AND h.rater = ? "
            "ORDER BY h.created_at DESC LIMIT ?", [run_id, rater, int(limit)])

    # ---------------------------------------------------------------- label sources (other labellers)
    def put_label_source(self, source: dict, labels: pd.DataFrame) -> None:
        """Store (or replace) one label source of a run with all its labels, in one transaction; a
        replaced source loses its old evaluations (they judged other labels)."""
        frame = labels[["layer", "unit", "label", "score", "detail"]].copy()
        frame["unit"] = frame["unit"].astype("int64")
        frame["score"] = frame["score"].astype(float)
        with self.transaction() as cur:
            self._delete_sources(cur, "source_id = ?", [source["source_id"]])
            cur.execute("INSERT INTO label_sources VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [source["source_id"], source["run_id"], source["name"], source["kind"], source["origin"],
                         json.dumps(source.get("settings", {})), source.get("score_name") or None, len(frame), now()])
            cur.register("frame", frame)
            cur.execute("INSERT INTO source_labels SELECT ?, layer, unit, label, score, detail FROM frame",
                        [source["source_id"]])
            cur.unregister("frame")

    @staticmethod
    def _delete_sources(cur, where: str, params: list) -> None:
        ids = [r[0] for r in cur.execute(f"SELECT source_id FROM label_sources WHERE {where}", params).fetchall()]
        cur.execute("DELETE FROM source_scores WHERE source_eval_id IN (SELECT source_eval_id FROM source_evals "
                    "WHERE source_id IN (SELECT unnest(?::TEXT[])))", [ids])
        for table in ("source_evals", "source_labels", "label_sources"):
            cur.execute(f"DELETE FROM {table} WHERE source_id IN (SELECT unnest(?::TEXT[]))", [ids])

    def delete_label_source(self, source_id: str) -> None:
        with self.transaction() as cur:
            self._delete_sources(cur, "source_id = ?", [source_id])

    def label_sources(self, run_id: str) -> pd.DataFrame:
        """A run's label sources, oldest first, with coverage: n_labels (rows of the file),
        n_matched (of them, on a unit of the run), n_units (the run's units)."""
        return self.df(
            "SELECT s.source_id, s.name, s.kind, s.origin, s.settings_json, s.score_name, s.n_labels, s.created_at, "
            "  (SELECT count(*) FROM source_labels l JOIN neurons n ON n.run_id = s.run_id AND n.layer = l.layer "
            "     AND n.unit = l.unit WHERE l.source_id = s.source_id) AS n_matched, "
            "  (SELECT count(*) FROM neurons n WHERE n.run_id = s.run_id) AS n_units "
            "FROM label_sources s WHERE s.run_id = ? ORDER BY s.created_at, s.name", [run_id])

    def source_coverage(self, run_id: str) -> pd.DataFrame:
        """Per source and run layer: the run's units, and how many of them the source labels."""
        return self.df(
            "SELECT s.source_id, n.layer, count(*) AS units, count(l.unit) AS matched "
            "FROM label_sources s JOIN neurons n ON n.run_id = s.run_id "
            "JOIN layers y ON y.run_id = n.run_id AND y.layer = n.layer "
            "LEFT JOIN source_labels l ON l.source_id = s.source_id AND l.layer = n.layer AND l.unit = n.unit "
            "WHERE s.run_id = ? GROUP BY s.source_id, n.layer, y.position ORDER BY s.source_id, y.position",
            [run_id])

    def source_layers(self, source_id: str) -> pd.DataFrame:
        """The layers a source's file names, with how many labels each."""
        return self.df("SELECT layer, count(*) AS labels FROM source_labels WHERE source_id = ? GROUP BY layer "
                       "ORDER BY layer", [source_id])

    def source_labels(self, run_id: str, source_id: str | None = None, layer: str | None = None,
                      unit: int | None = None) -> pd.DataFrame:
        """Labels of a run's sources on the run's units (matched by layer and unit), in the run's order."""
        sql = ("SELECT l.source_id, l.layer, l.unit, l.label, l.score, l.detail FROM source_labels l "
               "JOIN label_sources s USING (source_id) JOIN neurons n ON n.run_id = s.run_id AND n.layer = l.layer "
               "AND n.unit = l.unit JOIN layers y ON y.run_id = s.run_id AND y.layer = l.layer WHERE s.run_id = ?")
        params: list = [run_id]
        for col, value in (("l.source_id", source_id), ("l.layer", layer), ("l.unit", unit)):
            if value is not None:
                sql += f" AND {col} = ?"
                params.append(value)
        return self.df(sql + " ORDER BY s.created_at, l.source_id, y.position, l.unit", params)

    def source_evaluation_status(self, source_eval_id: str) -> str | None:
        rows = self.cursor().execute("SELECT status FROM source_evals WHERE source_eval_id = ?",
                                     [source_eval_id]).fetchall()
        return rows[0][0] if rows else None

    def record_source_evaluation(self, source_eval_id: str, source_id: str, run_id: str, evaluator: str,
                                 config_json: str, *, status: str, scores: pd.DataFrame | None = None,
                                 wall_s: float | None = None, models: dict | None = None,
                                 n_concepts: int | None = None, error: str = "") -> None:
        """Replace one evaluator pass over a source's labels with its raw scores, in one transaction."""
        with self.transaction() as cur:
            cur.execute("DELETE FROM source_scores WHERE source_eval_id = ?", [source_eval_id])
            cur.execute("DELETE FROM source_evals WHERE source_eval_id = ?", [source_eval_id])
            if scores is not None and len(scores):
                frame = scores[["layer", "unit", "variant", "kind", "rank", "image_id", "label", "raw"]]
                cur.register("frame", frame)
                cur.execute("INSERT INTO source_scores SELECT ?, layer, unit, variant, kind, rank, image_id, label, "
                            "raw FROM frame", [source_eval_id])
                cur.unregister("frame")
            cur.execute("INSERT INTO source_evals VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [source_eval_id, source_id, run_id, evaluator, config_json, status, now(), wall_s,
                         json.dumps(models or {}), n_concepts, error or None])

    def source_evaluations(self, run_id: str) -> pd.DataFrame:
        """Per source and evaluator, the newest pass (complete first)."""
        return self.df("SELECT * FROM source_evals WHERE run_id = ? QUALIFY row_number() OVER (PARTITION BY "
                       "source_id, evaluator ORDER BY status = 'complete' DESC, created_at DESC) = 1 "
                       "ORDER BY source_id, evaluator", [run_id])

    def source_scores(self, source_eval_id: str) -> pd.DataFrame:
        return self.df("SELECT layer, unit, variant, kind, rank, image_id, label, raw FROM source_scores "
                       "WHERE source_eval_id = ? ORDER BY layer, unit, variant, kind, rank", [source_eval_id])

    # The SQL console: what a reader may run, and how it is kept from changing the store.
    READ_ONLY_PRAGMAS = frozenset({
        "table_info", "show", "show_tables", "show_tables_expanded", "database_size", "storage_info", "version",
        "functions", "database_list", "collations", "platform", "metadata_info", "user_agent"})

    # table functions that read files or other databases, or run SQL given as text: not in the console
    OUTSIDE_FUNCTIONS = ("read_", "parquet_", "sniff_", "glob", "iceberg_", "delta_", "sqlite_", "postgres_",
                         "mysql_", "ducklake_", "query", "json_execute_serialized_sql", "load_", "install_")

    @classmethod
    def _check_sources(cls, sql: str) -> None:
        """Refuse a reading statement that reads anything but the store's tables (files, URLs,
        other databases), judged from DuckDB's own parse tree (json_serialize_sql)."""
        import re

        tree = json.loads(duckdb.connect(":memory:").execute("SELECT json_serialize_sql(?)", [sql]).fetchone()[0])
        if tree.get("error"):
            raise ClipevalError(f"the console cannot check this statement: {tree.get('error_message', '')}")
        stack = [tree]
        while stack:
            node = stack.pop()
            if isinstance(node, list):
                stack.extend(node)
                continue
            if not isinstance(node, dict):
                continue
            name = str(node.get("function_name", "")).lower()
            if name and name.startswith(cls.OUTSIDE_FUNCTIONS):
                raise ClipevalError(f"the console reads the run store only: {name}() is refused")
            if node.get("type") == "BASE_TABLE" and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]*",
                                                                      str(node.get("table_name", ""))):
                raise ClipevalError(f"the console reads the run store only: {node.get('table_name')!r} looks like "
                                    "a file or URL")
            stack.extend(node.values())

    @classmethod
    def check_read_only_sql(cls, sql: str):
        """The single statement in `sql` if it only reads the store (SELECT / WITH / FROM / DESCRIBE /
        SHOW / SUMMARIZE / EXPLAIN of those / a read-only PRAGMA); otherwise ClipevalError. Files, URLs
        and other databases are refused too (read_csv(...), FROM 'file.parquet', ATTACH, ...)."""
        import re

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
            cls._check_sources(st.query)
            return st
        if kind == duckdb.StatementType.EXPLAIN:
            inner = re.sub(r"^\s*explain\s+(analy[sz]e\s+)?", "", st.query, flags=re.IGNORECASE)
            cls.check_read_only_sql(inner)  # EXPLAIN ANALYZE executes its statement: it must read only
            return st
        if kind == duckdb.StatementType.PRAGMA:
            m = re.match(r"\s*pragma\s+(\w+)", st.query, flags=re.IGNORECASE)
            if m and m.group(1).lower() in cls.READ_ONLY_PRAGMAS:
                return st
            raise ClipevalError(f"only read-only PRAGMAs are allowed here ({', '.join(sorted(cls.READ_ONLY_PRAGMAS))})")
        raise ClipevalError(f"the console is read-only: {kind.name} statements are refused "
                            "(SELECT, WITH, FROM, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN and read-only PRAGMAs are allowed)")

    def read_only_query(self, sql: str, max_rows: int = 10_000, timeout_s: float = 30.0) -> tuple[pd.DataFrame, bool]:
        """Run one reading statement (see `check_read_only_sql`) on its own cursor, inside a transaction
        that is always rolled back, interrupted after `timeout_s` (a runaway join must not hang the
        app). Returns (at most max_rows rows, whether there were more)."""
        import threading

        statement = self.check_read_only_sql(sql)
        cur = self.cursor()
        cur.execute("BEGIN TRANSACTION")
        timer = threading.Timer(timeout_s, cur.interrupt)
        timer.start()
        try:
            cur.execute(statement)
            if cur.description is None:
                return pd.DataFrame(), False
            cols = [d[0] for d in cur.description]
            rows = cur.fetchmany(max_rows + 1)
            frame = pd.DataFrame(rows[:max_rows], columns=pd.Index(cols).astype(str))
            if len(set(cols)) < len(cols):  # keep duplicate column names apart for display
                frame.columns = [f"{c} ({i})" if cols.count(c) > 1 else c for i, c in enumerate(cols)]
            return frame, len(rows) > max_rows
        except duckdb.InterruptException as e:
            raise ClipevalError(f"the query was stopped after {timeout_s:.0f} s") from e
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
            "ES cosines of the top-5 images (real labels)":
                "SELECT s.layer, s.unit, s.label, s.rank, s.image_id, round(s.raw, 3) AS cosine\n"
                "FROM eval_scores s JOIN evaluations e USING (eval_id)\n"
                "WHERE e.evaluator = 'es' AND s.variant = 'real' AND s.kind = 'top'\n"
                "ORDER BY s.layer, s.unit, s.rank\nLIMIT 100",
            "Human verdicts per rater": "SELECT run_id, rater, count(*) AS answers,\n"
                                        "       count(DISTINCT (layer, unit)) AS neurons, avg(verdict::INT) AS yes_share\n"
                                        "FROM human_verdicts\nGROUP BY ALL\nORDER BY run_id, rater",
            "Probe images by source and licence": "SELECT source, license, count(*) AS images\nFROM probe_images\n"
                                                  "GROUP BY ALL\nORDER BY images DESC",
        }
