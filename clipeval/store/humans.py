"""Human yes/no verdicts: append-only, the newest answer of each rater on each neuron counts."""

from __future__ import annotations

import pandas as pd

from clipeval.store.runs import insert_frame, now, require_run


class HumansMixin:
    def add_human_verdicts(self, run_id: str, verdicts: pd.DataFrame, source: str) -> int:
        """Append (layer, unit, rater, verdict) rows; history is kept, the newest per rater counts."""
        frame = verdicts[["layer", "unit", "rater", "verdict"]].copy()
        frame["unit"] = frame["unit"].astype(int)
        frame["verdict"] = frame["verdict"].astype(bool)
        with self.transaction() as cur:
            require_run(cur, run_id)
            insert_frame(cur, "human_verdicts", frame, "run_id, source, created_at", [run_id, source, now()])
        return len(frame)

    def human_verdicts(self, run_id: str, rater: str | None = None) -> pd.DataFrame:
        """The current verdict of each rater on each neuron (the newest answer)."""
        sql = (
            "SELECT layer, unit, rater, verdict, source, created_at FROM human_verdicts WHERE run_id = ?"
            + (" AND rater = ?" if rater else "")
            + " QUALIFY row_number() OVER (PARTITION BY layer, unit, rater ORDER BY created_at DESC) = 1"
            " ORDER BY rater, layer, unit"
        )
        return self.df(sql, [run_id, rater] if rater else [run_id])

    def raters(self, run_id: str) -> list[str]:
        return [
            r[0]
            for r in self.rows("SELECT DISTINCT rater FROM human_verdicts WHERE run_id = ? ORDER BY rater", [run_id])
        ]
