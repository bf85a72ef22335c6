"""Runs and what a run holds: the run rows, their layers, neurons, runner-ups, images, histograms, and
the probe images and concept sets runs share."""

from __future__ import annotations

import json
import os
import socket
from datetime import datetime, timezone

import pandas as pd

from clipeval.errors import ClipevalError
from clipeval.store.runnames import check_name
from clipeval.store.schema import RUN_TABLES


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


def mark_interrupted(df: pd.DataFrame) -> pd.DataFrame:
    """A 'running' row whose process is gone shows as 'interrupted'."""
    if len(df) and "pid" in df.columns:
        dead = (df["status"] == "running") & ~df.apply(lambda r: pid_alive(r["pid"], r["host"]), axis=1)
        df.loc[dead, "status"] = "interrupted"
    return df


class RunRemoved(ClipevalError):
    """The run a writer was writing to was removed (`clipeval rm`, the app) while it worked."""


def require_run(cur, run_id: str) -> None:
    """Inside a writer's transaction, before it writes rows of `run_id`: refuse if the run is gone.
    `rm` may commit at any moment before this transaction; rows written after it would be orphans
    that a later run with the same id (its settings' hash) would inherit."""
    if not cur.execute("SELECT count(*) FROM runs WHERE run_id = ?", [run_id]).fetchall()[0][0]:
        raise RunRemoved(f"run {run_id} was removed while this was being computed; nothing of it was stored")


def insert_frame(con, table: str, frame: pd.DataFrame, key_cols: str, key_values: list) -> None:
    """INSERT every row of `frame` into `table`, with the key columns set to `key_values`."""
    if frame is None or not len(frame):
        return
    con.register("frame", frame)
    try:
        cols = ", ".join(frame.columns)
        marks = ", ".join("?" for _ in key_values)
        con.execute(f"INSERT INTO {table} ({key_cols}, {cols}) SELECT {marks}, {cols} FROM frame", key_values)
    finally:
        con.unregister("frame")


class RunsMixin:
    # ---------------------------------------------------------------- runs
    def start_run(self, run_id: str, name: str, kind: str, config_json: str, config_hash: str) -> None:
        """Record a new run as 'running' (so a crash leaves it visibly interrupted, never complete).
        A complete run is never touched here: a forced recompute replaces it in `finish_run`."""
        with self.transaction() as cur:
            row = cur.execute("SELECT status FROM runs WHERE run_id = ?", [run_id]).fetchall()
            if row and row[0][0] == "complete":
                return
            for table in RUN_TABLES:
                cur.execute(f"DELETE FROM {table} WHERE run_id = ?", [run_id])
            cur.execute("DELETE FROM runs WHERE run_id = ?", [run_id])
            cur.execute(
                "INSERT INTO runs (run_id, name, kind, config_json, config_hash, status, pid, host, created_at)"
                " VALUES (?, ?, ?, ?, ?, 'running', ?, ?, ?)",
                [run_id, name, kind, config_json, config_hash, os.getpid(), socket.gethostname(), now()],
            )

    def fail_run(self, run_id: str, status: str, error: str) -> None:
        """Flag a run failed/interrupted, unless it is complete (a failed recompute keeps the old result)."""
        self.execute(
            "UPDATE runs SET status = ?, error = ?, pid = NULL WHERE run_id = ? AND status <> 'complete'",
            [status, error[:2000], run_id],
        )

    def finish_run(
        self,
        run_id: str,
        *,
        layers: pd.DataFrame,
        neurons: pd.DataFrame,
        runner_ups: pd.DataFrame,
        neuron_images: pd.DataFrame,
        histograms: pd.DataFrame,
        meta: dict,
        activation_maps: pd.DataFrame | None = None,
    ) -> None:
        """Swap in every result row of a run and flag it complete, in ONE transaction: a previous result
        of the same run (a forced recompute) is deleted in the same transaction, so a reader, or a
        kill -9 at any moment, finds either the old complete result or the new one."""
        with self.transaction() as cur:
            require_run(cur, run_id)
            for table in RUN_TABLES:
                cur.execute(f"DELETE FROM {table} WHERE run_id = ?", [run_id])
            for table, frame in (
                ("layers", layers),
                ("neurons", neurons),
                ("runner_ups", runner_ups),
                ("neuron_images", neuron_images),
                ("histograms", histograms),
                ("activation_maps", activation_maps),
            ):
                insert_frame(cur, table, frame, "run_id", [run_id])
            cur.execute(
                "UPDATE runs SET status = 'complete', pid = NULL, finished_at = ?, probe_fingerprint = ?, concept_hash = ?,"
                " n_images = ?, n_skipped_images = ?, models_json = ?, timings_json = ?, peak_rss_mb = ?, error = NULL"
                " WHERE run_id = ?",
                [
                    now(),
                    meta.get("probe_fingerprint"),
                    meta.get("concept_hash"),
                    meta.get("n_images"),
                    meta.get("n_skipped_images", 0),
                    json.dumps(meta.get("models", {})),
                    json.dumps(meta.get("timings", {})),
                    meta.get("peak_rss_mb"),
                    run_id,
                ],
            )

    def get_meta(self, key: str) -> str | None:
        return self.scalar("SELECT value FROM meta WHERE key = ?", [key])

    def set_meta(self, key: str, value: str, runs=()) -> None:
        """Store a setting; one derived from `runs` (a calibration) is refused if one of them is gone."""
        with self.transaction() as cur:
            for run_id in runs:
                require_run(cur, run_id)
            cur.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [key, value])

    def set_run_timings(self, run_id: str, timings: dict) -> None:
        self.execute("UPDATE runs SET timings_json = ? WHERE run_id = ?", [json.dumps(timings), run_id])

    def runs(self) -> pd.DataFrame:
        """All runs, newest first; a 'running' run whose process is gone shows as 'interrupted'."""
        return mark_interrupted(
            self.df(
                "SELECT r.*, (SELECT count(*) FROM neurons n WHERE n.run_id = r.run_id) AS n_neurons "
                "FROM runs r ORDER BY created_at DESC"
            )
        )

    def run(self, run_id: str) -> dict:
        """One run by id or unique id prefix or name."""
        if not str(run_id).strip():  # '' is a prefix of every id: an unset "$RUN" must not pick a run
            raise ClipevalError(
                "the run id is empty; name a run by its id, an id prefix or its name (`clipeval runs` lists them)"
            )
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
            raise ClipevalError(
                f"run {run['run_id']} is {run['status']}, not complete; finish it by running "
                "the same `clipeval dissect` again, or remove it with `clipeval rm`"
            )
        return run

    def rename_run(self, run_id: str, name: str) -> str:
        """Give a run a new display name (its id, the hash of its settings, stays); returns the name."""

        name = check_name(name)
        run_id = self.run(run_id)["run_id"]
        self.execute("UPDATE runs SET name = ? WHERE run_id = ?", [name, run_id])
        return name

    def delete_run(self, run_id: str) -> None:
        """The run and every row that belongs to it, in one transaction."""
        with self.transaction() as cur:
            evals = [r[0] for r in cur.execute("SELECT eval_id FROM evaluations WHERE run_id = ?", [run_id]).fetchall()]
            for table in ("eval_scores", "eval_neurons"):
                cur.execute(f"DELETE FROM {table} WHERE eval_id IN (SELECT unnest(?::TEXT[]))", [evals])
            for table in (*RUN_TABLES, "evaluations", "human_verdicts", "runs"):
                cur.execute(f"DELETE FROM {table} WHERE run_id = ?", [run_id])
            self._delete_sources(cur, "run_id = ?", [run_id])

    # ---------------------------------------------------------------- probe and concepts
    def has_probe(self, fingerprint: str) -> bool:
        return bool(self.scalar("SELECT count(*) FROM probe_images WHERE probe_fingerprint = ?", [fingerprint]))

    def put_probe(self, fingerprint: str, images: pd.DataFrame) -> None:
        """images: image_id, path, source, license, label, thumbnail (bytes)."""
        with self.transaction() as cur:
            cur.execute("DELETE FROM probe_images WHERE probe_fingerprint = ?", [fingerprint])
            insert_frame(
                cur,
                "probe_images",
                images[["image_id", "path", "source", "license", "label", "thumbnail"]],
                "probe_fingerprint",
                [fingerprint],
            )

    def put_concepts(self, concept_hash: str, name: str, concepts) -> None:
        with self.transaction() as cur:
            if cur.execute("SELECT count(*) FROM concept_sets WHERE concept_hash = ?", [concept_hash]).fetchall()[0][0]:
                return
            insert_frame(
                cur,
                "concepts",
                pd.DataFrame({"idx": range(len(concepts)), "concept": list(concepts)}),
                "concept_hash",
                [concept_hash],
            )
            cur.execute("INSERT INTO concept_sets VALUES (?, ?, ?)", [concept_hash, name, len(concepts)])

    def concepts(self, concept_hash: str) -> list[str]:
        return [
            r[0] for r in self.rows("SELECT concept FROM concepts WHERE concept_hash = ? ORDER BY idx", [concept_hash])
        ]

    def images_without_thumbnail(self, probe_fingerprint: str, image_ids) -> list[int]:
        """Those of `image_ids` whose probe row has no thumbnail yet, in order."""
        return [
            int(r[0])
            for r in self.rows(
                "SELECT image_id FROM probe_images WHERE probe_fingerprint = ? AND thumbnail IS NULL AND image_id IN "
                "(SELECT unnest(?::INTEGER[])) ORDER BY image_id",
                [probe_fingerprint, [int(i) for i in image_ids]],
            )
        ]

    def put_thumbnails(self, probe_fingerprint: str, thumbs: dict[int, bytes]) -> None:
        """Set the thumbnails of probe rows that have none (a concurrent run may have set the same ones)."""
        if not thumbs:
            return
        frame = pd.DataFrame({"image_id": list(thumbs), "thumbnail": list(thumbs.values())})
        with self.transaction() as cur:
            cur.register("thumbs", frame)
            try:
                cur.execute(
                    "UPDATE probe_images p SET thumbnail = t.thumbnail FROM thumbs t WHERE p.probe_fingerprint = ? "
                    "AND p.image_id = t.image_id AND p.thumbnail IS NULL",
                    [probe_fingerprint],
                )
            finally:
                cur.unregister("thumbs")

    def thumbnails(self, probe_fingerprint: str, image_ids) -> dict[int, bytes]:
        """The stored thumbnails of `image_ids` (a dissection stores only those of images a page shows)."""
        rows = self.rows(
            "SELECT image_id, thumbnail FROM probe_images WHERE probe_fingerprint = ? AND thumbnail IS NOT NULL "
            "AND image_id IN "
            "(SELECT unnest(?::INTEGER[]))",
            [probe_fingerprint, [int(i) for i in image_ids]],
        )
        return {int(i): bytes(t) for i, t in rows}

    def probe_image(self, probe_fingerprint: str, image_id: int) -> dict | None:
        """One probe image's id, path, source, license and label (None when the probe has no such id)."""
        df = self.df(
            "SELECT image_id, path, source, license, label FROM probe_images WHERE probe_fingerprint = ? "
            "AND image_id = ?",
            [probe_fingerprint, int(image_id)],
        )
        return df.iloc[0].to_dict() if len(df) else None

    def probe_sources(self, probe_fingerprint: str) -> pd.DataFrame:
        """How many of a probe's images come from each source (source, images), most first."""
        return self.df(
            "SELECT source, count(*) AS images FROM probe_images WHERE probe_fingerprint = ? GROUP BY source "
            "ORDER BY images DESC, source",
            [probe_fingerprint],
        )

    def probe_images(self, probe_fingerprint: str, with_thumbnails: bool = False) -> pd.DataFrame:
        cols = "image_id, path, source, license, label" + (", thumbnail" if with_thumbnails else "")
        return self.df(
            f"SELECT {cols} FROM probe_images WHERE probe_fingerprint = ? ORDER BY image_id", [probe_fingerprint]
        )

    # ---------------------------------------------------------------- run contents
    def layers(self, run_id: str) -> pd.DataFrame:
        return self.df("SELECT layer, shape, n_units FROM layers WHERE run_id = ? ORDER BY position", [run_id])

    def neurons(self, run_id: str, layer: str | None = None, unit: int | None = None) -> pd.DataFrame:
        """The run's neurons (of one layer, or the one unit of it) in run order: layers by position, units ascending."""
        with self.reading():  # one connection for both queries
            # a store written before these columns and opened read-only (no upgrade) reads as all alive
            extra = (
                "coalesce(n.dead, false) AS dead, n.n_negatives"
                if self.columns("neurons") >= {"dead", "n_negatives"}
                else "false AS dead, NULL::INTEGER AS n_negatives"
            )
            sql = (
                f"SELECT n.layer, n.unit, n.label, n.similarity, {extra} "
                "FROM neurons n JOIN layers l USING (run_id, layer) "
                "WHERE n.run_id = ?"
                + (" AND n.layer = ?" if layer else "")
                + (" AND n.unit = ?" if layer and unit is not None else "")
                + " ORDER BY l.position, n.unit"
            )
            params = [run_id] + ([layer] if layer else []) + ([int(unit)] if layer and unit is not None else [])
            return self.df(sql, params)

    def runner_ups(self, run_id: str, layer: str, unit: int) -> pd.DataFrame:
        return self.df(
            "SELECT rank, concept, score FROM runner_ups WHERE run_id = ? AND layer = ? AND unit = ? ORDER BY rank",
            [run_id, layer, unit],
        )

    def all_runner_ups(self, run_id: str) -> pd.DataFrame:
        return self.df(
            "SELECT layer, unit, rank, concept, score FROM runner_ups WHERE run_id = ? ORDER BY layer, unit, rank",
            [run_id],
        )

    def neuron_images(
        self, run_id: str, kinds=("top",), layer: str | None = None, unit: int | None = None
    ) -> pd.DataFrame:
        sql = (
            "SELECT layer, unit, kind, rank, image_id, activation FROM neuron_images WHERE run_id = ? "
            "AND kind IN (SELECT unnest(?::TEXT[]))"
        )
        params: list = [run_id, list(kinds)]
        if layer is not None:
            sql += " AND layer = ?"
            params.append(layer)
        if unit is not None:
            sql += " AND unit = ?"
            params.append(int(unit))
        return self.df(sql + " ORDER BY layer, unit, kind, rank", params)

    def activation_maps(self, run_id: str, layer: str | None = None, unit: int | None = None) -> pd.DataFrame:
        """Stored activation maps (layer, unit, image_id, h, w, lo, hi, map: uint8 bytes) on the units' top
        images: one unit's, or a whole run's (none in a store from before schema version 4 read as it is)."""
        cols = ["layer", "unit", "image_id", "h", "w", "lo", "hi", "map"]
        if not self.has_table("activation_maps"):
            return pd.DataFrame(columns=cols)
        sql, params = f"SELECT {', '.join(cols)} FROM activation_maps WHERE run_id = ?", [run_id]
        if layer is not None:
            sql, params = sql + " AND layer = ? AND unit = ?", params + [layer, int(unit)]
        return self.df(sql + " ORDER BY layer, unit, image_id", params)

    def histogram(self, run_id: str, layer: str, unit: int) -> pd.DataFrame:
        return self.df(
            "SELECT bin, lo, hi, count FROM histograms WHERE run_id = ? AND layer = ? AND unit = ? ORDER BY bin",
            [run_id, layer, unit],
        )
