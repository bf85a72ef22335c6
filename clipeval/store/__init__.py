"""The run store: one DuckDB file. This package is the ONLY place with SQL in it.

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
'complete' only in the transaction that writes its last rows: readers never see half a result, and
a recomputed result replaces the old one in that same transaction.

Nobody holds the file between calls (connection.py): a read opens a read-only connection for one
query, a write a read-write connection for one transaction, so the app, CLI readers and CLI writers
share one store; whoever finds it busy waits and retries, up to CLIPEVAL_LOCK_TIMEOUT seconds.

Modules: connection (opening, locking, waiting), schema (tables, upgrades), runs, evaluations,
humans, sources (other labellers' labels and their evaluations), queries (what the pages read),
console (the read-only SQL console).
"""

from __future__ import annotations

import os
from pathlib import Path

from clipeval.store.connection import (
    DEFAULT_LOCK_TIMEOUT_S,
    Connection,
    StoreBusy,
    check_store_path,
    lock_timeout,
)
from clipeval.store.console import ConsoleMixin, check_read_only_sql
from clipeval.store.evaluations import EvaluationGone, EvaluationsMixin
from clipeval.store.humans import HumansMixin
from clipeval.store.queries import QueriesMixin
from clipeval.store.runs import RunRemoved, RunsMixin, now, pid_alive
from clipeval.store.schema import RUN_TABLES, SCHEMA_VERSION, SchemaMixin
from clipeval.store.sources import SourcesMixin

DEFAULT_DB = Path(os.environ.get("CLIPEVAL_DB", Path(__file__).resolve().parents[2] / "data" / "clipeval.duckdb"))

__all__ = [
    "Store",
    "StoreBusy",
    "RunRemoved",
    "EvaluationGone",
    "DEFAULT_DB",
    "DEFAULT_LOCK_TIMEOUT_S",
    "SCHEMA_VERSION",
    "RUN_TABLES",
    "check_store_path",
    "check_read_only_sql",
    "lock_timeout",
    "now",
    "pid_alive",
]


class Store(
    RunsMixin, EvaluationsMixin, HumansMixin, SourcesMixin, QueriesMixin, ConsoleMixin, SchemaMixin, Connection
):
    """A DuckDB run store. Cheap to create, holds no connection: each call opens the file for itself."""
