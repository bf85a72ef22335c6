"""Read-only queries the Streamlit pages need (clipeval/ui caches them). Nothing here writes."""

from __future__ import annotations

import re

import pandas as pd

from clipeval.errors import ClipevalError
from clipeval.store.runs import pid_alive


class QueriesMixin:
    def data_version(self, run_id: str | None = None) -> str:
        """A cheap fingerprint of what the app caches: changes whenever a run (its status or timings
        included), an evaluation, a human verdict or a label source or its evaluation (of `run_id`, or
        of any run) is added, replaced or deleted, and when the process of a 'running' run or
        evaluation (of the run or of a label source) dies (it then reads 'interrupted')."""
        where = " WHERE run_id = ?" if run_id else ""
        with self.reading():  # one connection for every query
            running = self.rows(
                "SELECT pid, host FROM runs WHERE status = 'running'"
                + (" AND run_id = ?" if run_id else "")
                + " UNION ALL SELECT pid, host FROM evaluations WHERE status = 'running'"
                + (" AND run_id = ?" if run_id else ""),
                [run_id] * 2 if run_id else [],
            )
            row = self._version_row(where, [run_id] * 3 if run_id else [])
            # settings every run reads (a stand-in's calibrated thresholds, which move every default)
            if self.has_table("meta"):
                row += self.rows(
                    "SELECT md5(coalesce(string_agg(key || '=' || value, ',' ORDER BY key), '')) FROM meta"
                )[0]
            if self.has_table("label_sources"):  # an older store read as it is has no sources yet
                row += self.rows(
                    f"SELECT (SELECT count(*) || '/' || coalesce(max(created_at)::TEXT, '') || '/' || coalesce(md5("
                    f"string_agg(source_id || name, ',' ORDER BY source_id)), '') FROM label_sources{where}), "
                    f"       (SELECT count(*) || '/' || coalesce(max(created_at)::TEXT, '') || '/' || coalesce(md5("
                    f"string_agg(source_eval_id || status, ',' ORDER BY source_eval_id)), '') FROM source_evals{where})",
                    [run_id] * 2 if run_id else [],
                )[0]
                if "pid" in self.columns("source_evals"):
                    running += self.rows(
                        "SELECT pid, host FROM source_evals WHERE status = 'running'"
                        + (" AND run_id = ?" if run_id else ""),
                        [run_id] if run_id else [],
                    )
        alive = "".join("1" if pid_alive(p, h) else "0" for p, h in running)
        return "|".join(str(x) for x in row) + "|" + alive

    def _version_row(self, where: str, params: list) -> tuple:
        return self.rows(
            "SELECT (SELECT count(*) || '/' || coalesce(max(created_at)::TEXT, '') || '/' || "
            "        coalesce(max(finished_at)::TEXT, '') || '/' || "
            "        coalesce(md5(string_agg(run_id || status || coalesce(name, '') || coalesce(timings_json, ''), ',' ORDER BY run_id)), '')"
            f"        FROM runs{where}), "
            "       (SELECT count(*) || '/' || coalesce(max(created_at)::TEXT, '') || '/' || "
            "        coalesce(max(finished_at)::TEXT, '') || '/' || "
            "        coalesce(md5(string_agg(eval_id || status, ',' ORDER BY eval_id)), '') FROM evaluations"
            f"{where}), "
            f"       (SELECT count(*) || '/' || coalesce(max(created_at)::TEXT, '') FROM human_verdicts{where})",
            params,
        )[0]

    def store_overview(self) -> dict:
        """Counts for the app's home page."""
        row = self.rows(
            "SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM runs WHERE status = 'complete'), "
            # labelled neurons: a dead unit (constant over the probe) is stored without a label
            "(SELECT count(*) FROM neurons WHERE label IS NOT NULL), "
            "(SELECT count(*) FROM evaluations WHERE status = 'complete'), "
            "(SELECT count(*) FROM evaluations WHERE status <> 'complete'), "
            "(SELECT count(*) FROM (SELECT DISTINCT run_id, layer, unit, rater FROM human_verdicts)), "
            "(SELECT count(DISTINCT rater) FROM human_verdicts), (SELECT count(*) FROM probe_images), "
            "(SELECT count(*) FROM concept_sets), "
            # automatic references (source 'auto: ...') are counted apart from people
            "(SELECT count(*) FROM (SELECT DISTINCT run_id, layer, unit, rater FROM human_verdicts "
            "  WHERE source LIKE 'auto%')), "
            "(SELECT count(DISTINCT rater) FROM human_verdicts WHERE source LIKE 'auto%')"
        )[0]
        keys = (
            "runs",
            "complete_runs",
            "neurons",
            "evaluations",
            "evaluations_not_complete",
            "human_verdicts",
            "raters",
            "probe_images",
            "concept_sets",
            "automatic_verdicts",
            "automatic_raters",
        )
        return dict(zip(keys, (int(x) for x in row)))

    def neuron_image_details(
        self, run_id: str, layer: str, unit: int, kinds=("top", "level", "low", "random")
    ) -> pd.DataFrame:
        """One neuron's stored images of the given kinds with their activation and where each image
        comes from (path, source, licence, known label); thumbnails come separately (`thumbnails`)."""
        return self.df(
            "SELECT ni.kind, ni.rank, ni.image_id, ni.activation, p.path, p.source, p.license, p.label AS image_label "
            "FROM neuron_images ni JOIN runs r USING (run_id) "
            "LEFT JOIN probe_images p ON p.probe_fingerprint = r.probe_fingerprint AND p.image_id = ni.image_id "
            "WHERE ni.run_id = ? AND ni.layer = ? AND ni.unit = ? AND ni.kind IN (SELECT unnest(?::TEXT[])) "
            "ORDER BY ni.kind, ni.rank",
            [run_id, layer, int(unit), list(kinds)],
        )

    # ---------------------------------------------------------------- moving between neurons
    # The neuron explorer's order is the run's: layers by position, units ascending (as `neurons`). These
    # answer its navigation with one row each, so a step does not read a run's 100k-row neuron list.
    ORDER = "FROM neurons n JOIN layers l USING (run_id, layer) WHERE n.run_id = ?"

    def layer_units(self, run_id: str) -> pd.DataFrame:
        """Per layer that has neurons, in run order: layer, neurons (how many are stored, dead ones
        included), first and last unit."""
        return self.df(
            f"SELECT n.layer, count(*) AS neurons, min(n.unit) AS first, max(n.unit) AS last {self.ORDER} "
            "GROUP BY n.layer, l.position ORDER BY l.position",
            [run_id],
        )

    def layer_counts(self, run_id: str) -> pd.DataFrame:
        """Per layer in run order: live neurons ('neurons') and dead ones ('dead': constant over the probe,
        left out of every share)."""
        dead = "coalesce(n.dead, false)" if "dead" in self.columns("neurons") else "false"  # an older store
        return self.df(
            f"SELECT n.layer, count(*) FILTER (WHERE NOT {dead}) AS neurons, "
            f"count(*) FILTER (WHERE {dead}) AS dead {self.ORDER} "
            "GROUP BY n.layer, l.position ORDER BY l.position",
            [run_id],
        )

    def neuron_at(self, run_id: str, index: int) -> tuple[str, int] | None:
        """The (layer, unit) at `index` in the run's order, None past its end."""
        if index < 0:
            return None
        got = self.rows(
            f"SELECT n.layer, n.unit {self.ORDER} ORDER BY l.position, n.unit LIMIT 1 OFFSET ?", [run_id, int(index)]
        )
        return (got[0][0], int(got[0][1])) if got else None

    def neuron_step(self, run_id: str, layer: str, unit: int, delta: int) -> tuple[str, int] | None:
        """The neuron `delta` places from (layer, unit) in the run's order, None past either end (Previous on
        the first neuron does not wrap round to the last). From a unit the run lacks, counted from the first
        neuron."""
        here = self.rows(f"SELECT l.position {self.ORDER} AND n.layer = ? AND n.unit = ?", [run_id, layer, int(unit)])
        if not here:
            return self.neuron_at(run_id, delta)
        if delta == 0:
            return (layer, int(unit))
        after = "l.position > ? OR (l.position = ? AND n.unit > ?)"
        before = "l.position < ? OR (l.position = ? AND n.unit < ?)"
        direction = "ASC" if delta > 0 else "DESC"
        position = here[0][0]
        got = self.rows(
            f"SELECT n.layer, n.unit {self.ORDER} AND ({after if delta > 0 else before}) "
            f"ORDER BY l.position {direction}, n.unit {direction} LIMIT 1 OFFSET ?",
            [run_id, position, position, int(unit), abs(int(delta)) - 1],
        )
        return (got[0][0], int(got[0][1])) if got else None

    def top_k(self, run_id: str) -> int:
        """How many top activating images the run stored per neuron (its largest 'top' rank; 0 if none)."""
        return int(
            self.scalar("SELECT coalesce(max(rank), 0) FROM neuron_images WHERE run_id = ? AND kind = 'top'", [run_id])
        )

    def search_neurons(self, run_id: str, text: str, limit: int = 200) -> pd.DataFrame:
        """Neurons whose label, or one of whose runner-up concepts, contains `text` (case-insensitive).
        Best matches first: the whole text (quality 0), a whole word of it (1: "hot dog" for "dog"), the
        start of a word (2), inside a word (3: "hotdog"); then label before runner-ups, then run order.
        Columns: layer, unit, label, similarity, matched, match_rank (1 = the label), match_quality."""
        q = text.strip().lower()
        word = re.sub(r"([.^$|?*+()\[\]{}\\])", r"\\\1", q)  # RE2 pattern of the literal text
        quality = (
            "CASE WHEN lower(concept) = ? THEN 0 "
            "WHEN regexp_matches(lower(concept), '(^|[^[:alnum:]])' || ? || '([^[:alnum:]]|$)') THEN 1 "
            "WHEN regexp_matches(lower(concept), '(^|[^[:alnum:]])' || ?) THEN 2 ELSE 3 END"
        )
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
            [q, word, word, run_id, q, run_id, q, run_id, int(limit)],
        )

    def label_counts(self, run_id: str, layer: str | None = None, limit: int = 25) -> pd.DataFrame:
        """The most frequent labels (of one layer, or of the whole run) with how many neurons carry them."""
        sql = (
            "SELECT label, count(*) AS neurons, count(*) / sum(count(*)) OVER () AS share, "
            "string_agg(DISTINCT layer, ', ' ORDER BY layer) AS layers FROM neurons "
            "WHERE run_id = ? AND label IS NOT NULL"
            + (" AND layer = ?" if layer else "")
            + " GROUP BY label ORDER BY neurons DESC, label LIMIT ?"
        )
        return self.df(sql, [run_id, layer, int(limit)] if layer else [run_id, int(limit)])

    def annotation_queue(
        self, run_id: str, rater: str, order: str = "layers", layer: str | None = None, exclude=()
    ) -> pd.DataFrame:
        """Neurons (with top-k images) that `rater` has not judged yet, in annotation order:
        'layers' = layer by layer, unit by unit; 'shuffled' = a fixed pseudo-random order (the same
        for every rater and every session, so stopping and resuming continues where one left off).
        `exclude`: (layer, unit) pairs to leave out (e.g. skipped in this session)."""
        if order not in ("layers", "shuffled"):
            raise ClipevalError(f"order must be 'layers' or 'shuffled', not {order!r}")
        ex = pd.DataFrame(list(exclude), columns=["layer", "unit"]).astype({"layer": str, "unit": "int64"})
        key = "l.position, n.unit" if order == "layers" else "md5(n.layer || ':' || n.unit::TEXT), l.position, n.unit"
        with self.reading() as cur:
            cur.register("exclude_frame", ex)
            try:
                return cur.execute(
                    "SELECT n.layer, n.unit, n.label, n.similarity FROM neurons n JOIN layers l USING (run_id, layer) "
                    "WHERE n.run_id = ?"
                    + (" AND n.layer = ?" if layer else "")
                    + " AND EXISTS (SELECT 1 FROM neuron_images i WHERE i.run_id = n.run_id AND i.layer = n.layer "
                    "             AND i.unit = n.unit AND i.kind = 'top') "
                    " AND NOT EXISTS (SELECT 1 FROM human_verdicts h WHERE h.run_id = n.run_id AND h.layer = n.layer "
                    "                 AND h.unit = n.unit AND h.rater = ?) "
                    " AND NOT EXISTS (SELECT 1 FROM exclude_frame e WHERE e.layer = n.layer AND e.unit = n.unit) "
                    f"ORDER BY {key}",
                    [run_id, *([layer] if layer else []), rater],
                ).df()
            finally:
                cur.unregister("exclude_frame")

    def annotation_progress(self, run_id: str, rater: str, layer: str | None = None) -> dict:
        """How many neurons (with top-k images) there are, how many `rater` has judged, how many 'yes'."""
        lay = " AND n.layer = ?" if layer else ""
        row = self.rows(
            "WITH todo AS (SELECT n.layer, n.unit FROM neurons n WHERE n.run_id = ?"
            + lay
            + "   AND EXISTS (SELECT 1 FROM neuron_images i WHERE i.run_id = n.run_id AND i.layer = n.layer "
            "               AND i.unit = n.unit AND i.kind = 'top')), "
            "cur AS (SELECT layer, unit, verdict FROM human_verdicts WHERE run_id = ? AND rater = ? "
            "   QUALIFY row_number() OVER (PARTITION BY layer, unit ORDER BY created_at DESC) = 1) "
            "SELECT (SELECT count(*) FROM todo), count(c.layer), count(*) FILTER (WHERE c.verdict) "
            "FROM todo t JOIN cur c USING (layer, unit)",
            [run_id, *([layer] if layer else []), run_id, rater],
        )[0]
        return {"total": int(row[0]), "judged": int(row[1]), "yes": int(row[2])}

    def rater_history(self, run_id: str, rater: str, limit: int = 20) -> pd.DataFrame:
        """A rater's latest answers, newest first (every answer, history included), with the labels judged."""
        return self.df(
            "SELECT h.created_at, h.layer, h.unit, n.label, h.verdict, h.source FROM human_verdicts h "
            "LEFT JOIN neurons n USING (run_id, layer, unit) WHERE h.run_id = ? AND h.rater = ? "
            "ORDER BY h.created_at DESC LIMIT ?",
            [run_id, rater, int(limit)],
        )
