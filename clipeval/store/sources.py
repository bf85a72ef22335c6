"""Label sources: other labellers' labels on a run's units (another run, the original CLIP-Dissect,
MILAN, NetDissect), and the run's evaluators' passes over them."""

from __future__ import annotations

import json

import pandas as pd

from clipeval.errors import ClipevalError
from clipeval.store.evaluations import SCORE_COLUMNS, replace_scores, start_running
from clipeval.store.runs import insert_frame, mark_interrupted, now, require_run

LABEL_COLUMNS = "layer, unit, label, score, detail"


def _require_source(cur, source_id: str, run_id: str) -> None:
    """Inside a transaction: refuse to write a pass over a source that was removed meanwhile."""
    require_run(cur, run_id)
    if not cur.execute("SELECT count(*) FROM label_sources WHERE source_id = ?", [source_id]).fetchall()[0][0]:
        raise ClipevalError(
            f"label source {source_id} of run {run_id} was removed while it was being judged; "
            "nothing of the pass was stored"
        )


class SourcesMixin:
    def put_label_source(self, source: dict, labels: pd.DataFrame, replace: bool = False) -> None:
        """Store one label source of a run with all its labels, in one transaction. The same labels
        added again keep the source's evaluations (only its name follows the new one). Other labels
        under the source's id or under the name of another of the run's sources are refused unless
        `replace`: then they replace that source, whose evaluations go with it (they judged other labels)."""
        frame = labels[["layer", "unit", "label", "score", "detail"]].copy()
        frame["unit"] = frame["unit"].astype("int64")
        frame["score"] = frame["score"].astype(float)
        sid, run_id, name = source["source_id"], source["run_id"], source["name"]
        with self.transaction() as cur:
            require_run(cur, run_id)
            old = cur.execute("SELECT name FROM label_sources WHERE source_id = ?", [sid]).fetchall()
            same_name = [
                r[0]
                for r in cur.execute(
                    "SELECT source_id FROM label_sources WHERE run_id = ? AND name = ? AND source_id <> ?",
                    [run_id, name, sid],
                ).fetchall()
            ]
            if same_name and not replace:
                raise ClipevalError(
                    f"run {run_id} already has a label source named {name!r} ({same_name[0]}) with "
                    "other labels; give this one another name (--name), or pass --force to replace "
                    "that source (its evaluations are dropped with it)"
                )
            if old:
                cur.register("frame", frame)
                try:
                    stored = f"SELECT {LABEL_COLUMNS} FROM source_labels WHERE source_id = ?"
                    differ = max(
                        cur.execute(
                            f"SELECT (SELECT count(*) FROM (SELECT {LABEL_COLUMNS} FROM frame EXCEPT ALL {stored})), "
                            f"(SELECT count(*) FROM ({stored} EXCEPT ALL SELECT {LABEL_COLUMNS} FROM frame))",
                            [sid, sid],
                        ).fetchall()[0]
                    )
                finally:
                    cur.unregister("frame")
                if not differ:  # the same labels: their evaluations still hold
                    cur.execute("UPDATE label_sources SET name = ? WHERE source_id = ?", [name, sid])
                    self._delete_sources(cur, "source_id IN (SELECT unnest(?::TEXT[]))", [same_name])
                    return
                if not replace:
                    raise ClipevalError(
                        f"label source {sid} ({old[0][0]}) of run {run_id} has other labels than "
                        f"these ({differ} of its labels differ); pass --force to replace it (its "
                        "evaluations are dropped and made again)"
                    )
                self._delete_sources(cur, "source_id = ?", [sid])
            cur.execute(
                "INSERT INTO label_sources VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    sid,
                    run_id,
                    name,
                    source["kind"],
                    source["origin"],
                    json.dumps(source.get("settings", {})),
                    source.get("score_name") or None,
                    len(frame),
                    now(),
                ],
            )
            insert_frame(cur, "source_labels", frame, "source_id", [sid])
            # the source this one replaces goes only now, in the transaction that wrote its replacement
            self._delete_sources(cur, "source_id IN (SELECT unnest(?::TEXT[]))", [same_name])

    @staticmethod
    def _delete_sources(cur, where: str, params: list) -> None:
        """Inside a transaction: the label sources matching `where`, with their labels and evaluations."""
        ids = [r[0] for r in cur.execute(f"SELECT source_id FROM label_sources WHERE {where}", params).fetchall()]
        cur.execute(
            "DELETE FROM source_scores WHERE source_eval_id IN (SELECT source_eval_id FROM source_evals "
            "WHERE source_id IN (SELECT unnest(?::TEXT[])))",
            [ids],
        )
        for table in ("source_evals", "source_labels", "label_sources"):
            cur.execute(f"DELETE FROM {table} WHERE source_id IN (SELECT unnest(?::TEXT[]))", [ids])

    def delete_label_source(self, source_id: str) -> None:
        with self.transaction() as cur:
            self._delete_sources(cur, "source_id = ?", [source_id])

    # A source's labels are judged on the run's live units only, the units every share of the run is over:
    # a dead unit (constant over the probe) has no top images, so its label cannot be judged. Coverage
    # counts live units, and says how many labels fell on dead ones.
    def label_sources(self, run_id: str) -> pd.DataFrame:
        """A run's label sources, oldest first, with coverage: n_labels (rows of the file), n_matched (of
        them, on a live unit of the run), n_units (the run's live units), n_on_dead (labels on dead units)."""
        return self.df(
            "SELECT s.source_id, s.name, s.kind, s.origin, s.settings_json, s.score_name, s.n_labels, s.created_at, "
            "  (SELECT count(*) FROM source_labels l JOIN neurons n ON n.run_id = s.run_id AND n.layer = l.layer "
            "     AND n.unit = l.unit WHERE l.source_id = s.source_id AND NOT coalesce(n.dead, false)) AS n_matched, "
            "  (SELECT count(*) FROM neurons n WHERE n.run_id = s.run_id AND NOT coalesce(n.dead, false)) AS n_units, "
            "  (SELECT count(*) FROM source_labels l JOIN neurons n ON n.run_id = s.run_id AND n.layer = l.layer "
            "     AND n.unit = l.unit WHERE l.source_id = s.source_id AND coalesce(n.dead, false)) AS n_on_dead "
            "FROM label_sources s WHERE s.run_id = ? ORDER BY s.created_at, s.name",
            [run_id],
        )

    def source_coverage(self, run_id: str) -> pd.DataFrame:
        """Per source and run layer: the run's live units, how many of them the source labels, and how
        many of its labels fall on the layer's dead units (not judged)."""
        return self.df(
            "SELECT s.source_id, n.layer, count(*) FILTER (WHERE NOT coalesce(n.dead, false)) AS units, "
            "  count(l.unit) FILTER (WHERE NOT coalesce(n.dead, false)) AS matched, "
            "  count(l.unit) FILTER (WHERE coalesce(n.dead, false)) AS on_dead "
            "FROM label_sources s JOIN neurons n ON n.run_id = s.run_id "
            "JOIN layers y ON y.run_id = n.run_id AND y.layer = n.layer "
            "LEFT JOIN source_labels l ON l.source_id = s.source_id AND l.layer = n.layer AND l.unit = n.unit "
            "WHERE s.run_id = ? GROUP BY s.source_id, n.layer, y.position ORDER BY s.source_id, y.position",
            [run_id],
        )

    def source_layers(self, source_id: str) -> pd.DataFrame:
        """The layers a source's file names, with how many labels each."""
        return self.df(
            "SELECT layer, count(*) AS labels FROM source_labels WHERE source_id = ? GROUP BY layer ORDER BY layer",
            [source_id],
        )

    def source_labels(
        self, run_id: str, source_id: str | None = None, layer: str | None = None, unit: int | None = None
    ) -> pd.DataFrame:
        """Labels of a run's sources on the run's live units (matched by layer and unit), in the run's order."""
        sql = (
            "SELECT l.source_id, l.layer, l.unit, l.label, l.score, l.detail FROM source_labels l "
            "JOIN label_sources s USING (source_id) JOIN neurons n ON n.run_id = s.run_id AND n.layer = l.layer "
            "AND n.unit = l.unit JOIN layers y ON y.run_id = s.run_id AND y.layer = l.layer "
            "WHERE s.run_id = ? AND NOT coalesce(n.dead, false)"
        )
        params: list = [run_id]
        for col, value in (("l.source_id", source_id), ("l.layer", layer), ("l.unit", unit)):
            if value is not None:
                sql += f" AND {col} = ?"
                params.append(value)
        return self.df(sql + " ORDER BY s.created_at, l.source_id, y.position, l.unit", params)

    def source_evaluation_status(self, source_eval_id: str) -> str | None:
        """The pass's status ('running' whose process died reads 'interrupted'), or None."""
        df = mark_interrupted(
            self.df("SELECT status, pid, host FROM source_evals WHERE source_eval_id = ?", [source_eval_id])
        )
        return df["status"].iloc[0] if len(df) else None

    def start_source_evaluation(
        self, source_eval_id: str, source_id: str, run_id: str, evaluator: str, config_json: str
    ) -> bool:
        """A 'running' row for one pass over a source's labels (see start_running)."""
        with self.transaction() as cur:  # start_running's transaction is this one
            _require_source(cur, source_id, run_id)
            return start_running(
                self,
                "source_evals",
                "source_eval_id",
                source_eval_id,
                {"source_id": source_id, "run_id": run_id, "evaluator": evaluator, "config_json": config_json},
            )

    def fail_source_evaluation(self, source_eval_id: str, status: str, error: str) -> None:
        """Flag a started pass failed/interrupted (a complete one keeps its result)."""
        self.execute(
            "UPDATE source_evals SET status = ?, error = ?, pid = NULL WHERE source_eval_id = ? "
            "AND status <> 'complete'",
            [status, error[:2000], source_eval_id],
        )

    def record_source_evaluation(
        self,
        source_eval_id: str,
        source_id: str,
        run_id: str,
        evaluator: str,
        config_json: str,
        *,
        status: str,
        scores: pd.DataFrame | None = None,
        wall_s: float | None = None,
        models: dict | None = None,
        n_concepts: int | None = None,
        error: str = "",
    ) -> None:
        """Replace one evaluator pass over a source's labels with its raw scores, in one transaction
        (the old scores stay until the new ones are in)."""
        with self.transaction() as cur:
            _require_source(cur, source_id, run_id)
            replace_scores(cur, "source_evals", "source_scores", "source_eval_id", source_eval_id, scores)
            cur.execute(
                "INSERT INTO source_evals (source_eval_id, source_id, run_id, evaluator, config_json, status, "
                "created_at, wall_s, models_json, n_concepts, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    source_eval_id,
                    source_id,
                    run_id,
                    evaluator,
                    config_json,
                    status,
                    now(),
                    wall_s,
                    json.dumps(models or {}),
                    n_concepts,
                    error or None,
                ],
            )

    def source_evaluations(self, run_id: str) -> pd.DataFrame:
        """Per source and evaluator, the newest pass (complete first; a killed one reads 'interrupted')."""
        return mark_interrupted(
            self.df(
                "SELECT * FROM source_evals WHERE run_id = ? QUALIFY row_number() OVER (PARTITION BY "
                "source_id, evaluator ORDER BY status = 'complete' DESC, created_at DESC) = 1 "
                "ORDER BY source_id, evaluator",
                [run_id],
            )
        )

    def source_scores(self, source_eval_id: str) -> pd.DataFrame:
        return self.df(
            f"SELECT {', '.join(SCORE_COLUMNS)} FROM source_scores "
            "WHERE source_eval_id = ? ORDER BY layer, unit, variant, kind, rank",
            [source_eval_id],
        )
