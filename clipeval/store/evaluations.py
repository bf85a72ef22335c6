"""Evaluator passes over a run: their status rows and raw scores."""

from __future__ import annotations

import json
import os
import socket

import numpy as np
import pandas as pd

from clipeval.errors import ClipevalError
from clipeval.store.runs import insert_frame, mark_interrupted, now, require_run


class EvaluationGone(ClipevalError):
    """An evaluation a reader holds was replaced or removed since it was read (reload the run)."""


SCORE_COLUMNS = ["layer", "unit", "variant", "kind", "rank", "image_id", "label", "raw"]


def replace_scores(cur, table: str, scores_table: str, id_col: str, id_value: str, scores: pd.DataFrame | None) -> None:
    """Inside the caller's transaction: drop an evaluation's row and raw scores and insert its new
    scores; the caller inserts the new row in the same transaction, so readers (and a kill -9) see
    the old result or the new one. For evaluations/eval_scores and source_evals/source_scores."""
    cur.execute(f"DELETE FROM {scores_table} WHERE {id_col} = ?", [id_value])
    cur.execute(f"DELETE FROM {table} WHERE {id_col} = ?", [id_value])
    if scores is not None and len(scores):
        insert_frame(cur, scores_table, scores[SCORE_COLUMNS], id_col, [id_value])


def start_running(store, table: str, id_col: str, id_value: str, row: dict) -> bool:
    """Record `id_value` in `table` (evaluations or source_evals) as 'running' with this process's id, so
    a kill leaves it visibly interrupted, not absent. A complete row is left as it is until its
    replacement is recorded; returns whether a 'running' row was written."""
    with store.transaction() as cur:
        require_run(cur, row["run_id"])
        found = cur.execute(f"SELECT status FROM {table} WHERE {id_col} = ?", [id_value]).fetchall()
        if found and found[0][0] == "complete":
            return False
        cur.execute(f"DELETE FROM {table} WHERE {id_col} = ?", [id_value])
        cols = {
            id_col: id_value,
            **row,
            "status": "running",
            "created_at": now(),
            "pid": os.getpid(),
            "host": socket.gethostname(),
        }
        cur.execute(
            f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", list(cols.values())
        )
    return True


class EvaluationsMixin:
    def evaluation_status(self, eval_id: str) -> str | None:
        """The evaluation's status ('running' whose process died reads 'interrupted'), or None."""
        df = mark_interrupted(self.df("SELECT status, pid, host FROM evaluations WHERE eval_id = ?", [eval_id]))
        return df["status"].iloc[0] if len(df) else None

    def start_evaluation(
        self, eval_id: str, run_id: str, evaluator: str, config_json: str, constant_label: str = ""
    ) -> bool:
        """A 'running' row for the evaluation (see start_running)."""
        return start_running(
            self,
            "evaluations",
            "eval_id",
            eval_id,
            {"run_id": run_id, "evaluator": evaluator, "config_json": config_json, "constant_label": constant_label},
        )

    def fail_evaluation(self, eval_id: str, status: str, error: str) -> None:
        """Flag a started evaluation failed/interrupted (a complete one keeps its result)."""
        self.execute(
            "UPDATE evaluations SET status = ?, error = ?, pid = NULL, finished_at = ? "
            "WHERE eval_id = ? AND status <> 'complete'",
            [status, error[:2000], now(), eval_id],
        )

    def record_evaluation(
        self,
        eval_id: str,
        run_id: str,
        evaluator: str,
        config_json: str,
        *,
        status: str,
        scores: pd.DataFrame | None = None,
        wall_s: float | None = None,
        models: dict | None = None,
        n_concepts: int | None = None,
        constant_label: str = "",
        error: str = "",
    ) -> None:
        """Replace the evaluation `eval_id` with its scores and final status, in one transaction
        (status 'complete', or 'unavailable' / 'failed' with the reason and no scores): the old scores
        stay until the new ones are in."""
        with self.transaction() as cur:
            require_run(cur, run_id)
            created = cur.execute(
                "SELECT created_at FROM evaluations WHERE eval_id = ? AND status = 'running'", [eval_id]
            ).fetchall()
            replace_scores(cur, "evaluations", "eval_scores", "eval_id", eval_id, scores)
            cur.execute(
                "INSERT INTO evaluations (eval_id, run_id, evaluator, config_json, status, created_at, "
                "finished_at, wall_s, models_json, n_concepts, constant_label, error) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    eval_id,
                    run_id,
                    evaluator,
                    config_json,
                    status,
                    created[0][0] if created else now(),
                    now(),
                    wall_s,
                    json.dumps(models or {}),
                    n_concepts,
                    constant_label,
                    error or None,
                ],
            )

    def evaluations(self, run_id: str | None = None) -> pd.DataFrame:
        sql = "SELECT * FROM evaluations" + (" WHERE run_id = ?" if run_id else "") + " ORDER BY finished_at DESC"
        return mark_interrupted(self.df(sql, [run_id] if run_id else []))

    def latest_evaluations(self, run_id: str) -> pd.DataFrame:
        """Per evaluator, its newest evaluation of the run (complete or not: the app shows why one is
        missing, and a killed one as 'interrupted')."""
        return mark_interrupted(
            self.df(
                "SELECT * FROM evaluations WHERE run_id = ? "
                "QUALIFY row_number() OVER (PARTITION BY evaluator ORDER BY status = 'complete' DESC, "
                "coalesce(finished_at, created_at) DESC) = 1 ORDER BY evaluator",
                [run_id],
            )
        )

    def eval_scores(self, eval_id: str, layer: str | None = None, unit: int | None = None) -> pd.DataFrame:
        sql = f"SELECT {', '.join(SCORE_COLUMNS)} FROM eval_scores WHERE eval_id = ?"
        params: list = [eval_id]
        if layer is not None:
            sql += " AND layer = ? AND unit = ?"
            params += [layer, int(unit)]
        return self.df(sql + " ORDER BY layer, unit, variant, kind, rank", params)

    def eval_variants(self, eval_id: str) -> dict[str, int]:
        """{label variant: its largest top-image rank (0 if none)} of an evaluation's scores, as a
        rules.ScoreTable holds them (its variants and kmax)."""
        return {
            v: int(k)
            for v, k in self.rows(
                "SELECT variant, coalesce(max(rank) FILTER (WHERE kind = 'top'), 0) FROM eval_scores "
                "WHERE eval_id = ? GROUP BY variant",
                [eval_id],
            )
        }

    def neuron_scores(self, eval_id: str, reduce: str, k: int, neurons: pd.DataFrame) -> pd.DataFrame:
        """Each neuron's score from its top-k images, per label variant, computed in DuckDB as
        rules.ScoreTable's image scores give it: `reduce` 'min' the lowest raw (CP's rank), 'max' the
        highest, 'auc' the ROC-AUC of the top-k raws against the neuron's inactive images' (ties count
        half). `neurons` (layer, unit): the neurons asked for. Columns row (the neuron's position in
        `neurons`), variant, score; a neuron without a score is not listed. Three numbers per neuron,
        where a run of 100k neurons stores 10M image scores. Raises EvaluationGone when the evaluation is
        no longer stored (a page holding it would otherwise read no scores as 'no neuron scored')."""
        frame = pd.DataFrame({"layer": neurons["layer"].astype(str), "unit": neurons["unit"].astype("int64")})
        frame["row"] = np.arange(len(frame))
        # NaN and NULL both mean no score (numpy's nanmin / nanmax and the AUC's valid pairs leave them out)
        scored = (
            "FROM eval_scores s JOIN neuron_rows n USING (layer, unit) "
            "WHERE s.eval_id = ? AND s.raw IS NOT NULL AND NOT isnan(s.raw)"
        )
        if reduce in ("min", "max"):
            sql = (
                f"SELECT n.row, s.variant, {reduce}(s.raw) AS score {scored} AND s.kind = 'top' AND s.rank <= ? "
                "GROUP BY n.row, s.variant"
            )
        elif reduce == "auc":
            # each neuron's top and inactive raws as two lists, every pair compared in a list lambda: a third of
            # the time and memory of joining the scores to themselves (30M pairs at 100k neurons and k = 5)
            sql = (
                "SELECT row, variant, list_sum(list_transform(tops, lambda x: list_sum(list_transform(others, "
                "lambda y: CASE WHEN x > y THEN 1.0 WHEN x = y THEN 0.5 ELSE 0.0 END)))) / (len(tops) * len(others)) "
                "AS score FROM (SELECT n.row, s.variant, list(s.raw) FILTER (WHERE s.kind = 'top') AS tops, "
                f"list(s.raw) FILTER (WHERE s.kind <> 'top') AS others {scored} AND (s.kind <> 'top' OR s.rank <= ?) "
                "GROUP BY n.row, s.variant) WHERE len(tops) > 0 AND len(others) > 0"
            )
        else:
            raise ValueError(f"unknown reduction {reduce!r}")
        with self.reading() as cur:
            if not cur.execute("SELECT count(*) FROM evaluations WHERE eval_id = ?", [eval_id]).fetchall()[0][0]:
                raise EvaluationGone(f"evaluation {eval_id} is no longer in the store (replaced or removed)")
            cur.register("neuron_rows", frame)
            try:
                return cur.execute(sql, [eval_id, int(k)]).df()
            finally:
                cur.unregister("neuron_rows")

    def delete_evaluation(self, eval_id: str) -> None:
        with self.transaction() as cur:
            cur.execute("DELETE FROM eval_scores WHERE eval_id = ?", [eval_id])
            cur.execute("DELETE FROM evaluations WHERE eval_id = ?", [eval_id])
