"""The store's tables, and bringing an older store up to date.

Versions: 1 the first release; 2 pid/host on evaluations (a killed evaluator shows as interrupted);
3 the label-source tables and neurons.dead / neurons.n_negatives; 4 activation_maps (where a unit
fires on its top images); 5 pid/host on source_evals (a killed pass over a label source shows as
interrupted).
"""

from __future__ import annotations

from clipeval.errors import ClipevalError

SCHEMA_VERSION = 5

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
CREATE TABLE IF NOT EXISTS activation_maps (
    run_id TEXT, layer TEXT, unit INTEGER, image_id INTEGER, h INTEGER, w INTEGER, lo DOUBLE, hi DOUBLE, map BLOB);
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
    constant_label TEXT, error TEXT, pid INTEGER, host TEXT);
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
    created_at TIMESTAMP, wall_s DOUBLE, models_json TEXT, n_concepts INTEGER, error TEXT, pid INTEGER, host TEXT);
CREATE TABLE IF NOT EXISTS source_scores (
    source_eval_id TEXT, layer TEXT, unit INTEGER, variant TEXT, kind TEXT, rank INTEGER, image_id INTEGER,
    label TEXT, raw DOUBLE);
"""

# columns added after a table was first released: an older store gets them (with their defaults) from
# its next writer; each statement is idempotent
MIGRATIONS = """
ALTER TABLE evaluations ADD COLUMN IF NOT EXISTS pid INTEGER;
ALTER TABLE evaluations ADD COLUMN IF NOT EXISTS host TEXT;
ALTER TABLE neurons ADD COLUMN IF NOT EXISTS dead BOOLEAN DEFAULT false;
ALTER TABLE neurons ADD COLUMN IF NOT EXISTS n_negatives INTEGER;
ALTER TABLE source_evals ADD COLUMN IF NOT EXISTS pid INTEGER;
ALTER TABLE source_evals ADD COLUMN IF NOT EXISTS host TEXT;
"""

RUN_TABLES = ("layers", "neurons", "runner_ups", "neuron_images", "histograms", "activation_maps")


class SchemaMixin:
    def _init_schema(self) -> None:
        """Create the tables, or bring an older store up to SCHEMA_VERSION (one short write, only
        when needed: a current store is only read here)."""
        if self.path.exists():
            with self.reading() as con:
                tables = [
                    r[0]
                    for r in con.execute(
                        "SELECT table_name FROM information_schema.tables ORDER BY table_name"
                    ).fetchall()
                ]
                has_meta = "meta" in tables
                version = (
                    con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall() if has_meta else []
                )
            if version and int(version[0][0]) >= SCHEMA_VERSION:
                return
            # another program's database: a writer must not add the store's tables to it (an empty
            # DuckDB file, e.g. from a writer killed before its first commit, may become a store)
            if not has_meta and (tables or self.read_only):
                raise ClipevalError(
                    f"{self.path} is a DuckDB file without a run store in it"
                    + (f" (its tables: {', '.join(tables[:5])}{', ...' if len(tables) > 5 else ''})" if tables else "")
                    + "; --db takes a run store, or a new name to make one"
                )
            if self.read_only:
                return  # an older store is read as it is; the next writer upgrades it
        with self.transaction() as con:
            con.execute(SCHEMA)
            con.execute(MIGRATIONS)
            con.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])

    def has_table(self, name: str) -> bool:
        """Whether the store has this table (an older store opened read-only may lack the newer
        tables: they are created by its next writer)."""
        return bool(self.scalar("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]))

    def columns(self, table: str) -> set[str]:
        """The columns `table` has in this store (an older store read as it is may lack newer ones)."""
        return {
            r[0] for r in self.rows("SELECT column_name FROM information_schema.columns WHERE table_name = ?", [table])
        }
