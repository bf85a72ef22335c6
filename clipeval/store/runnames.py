"""Telling runs apart: a short description of what makes each run differ from the others in the store
(concept set, similarity function, labelling model, target, layers, probe; the date when nothing else
differs), shown first in every run picker, so three demo runs no longer all read
"demo: EfficientNet-Lite0 | demo p...". Users may also rename a run (Store.rename_run)."""

from __future__ import annotations

import pandas as pd

from clipeval.errors import ClipevalError
from clipeval.formats import json_cell

MAX_NAME = 120


def _probe(cfg: dict) -> str:
    probe = cfg.get("probe")
    paths = probe.get("paths", []) if isinstance(probe, dict) else (probe or [])
    return " + ".join(str(p).rstrip("/").split("/")[-1] for p in paths)


def _similarity(cfg: dict) -> str:
    sim = cfg.get("similarity") or {}
    if not isinstance(sim, dict):
        return str(sim)
    params = sim.get("params") or []
    extra = ", ".join(f"{k}={v:g}" if isinstance(v, (int, float)) else f"{k}={v}" for k, v in params)
    return f"{sim.get('fn', '')}{f' ({extra})' if extra else ''}"


def _labeller(cfg: dict, models: dict) -> str:
    info = models.get("image_text") or {}
    if info.get("description"):
        return str(info["description"]).split(":")[0].split(" (")[0]
    it = cfg.get("image_text") or {}
    if isinstance(it, dict) and it:
        return " ".join(str(it.get(k)) for k in ("backend", "arch", "pretrained") if it.get(k))
    return str(models.get("labels") or "")


def _concepts(cfg: dict) -> str:
    c = cfg.get("concepts")
    return str(c.get("source") if isinstance(c, dict) else c or "")


def _target(cfg: dict) -> str:
    t = cfg.get("target")
    return str(t.get("name") if isinstance(t, dict) else t or "")


# what a run is made of, in the order a difference is named
FIELDS = (
    ("concepts", _concepts),
    ("similarity", _similarity),
    ("labeller", _labeller),
    ("target", _target),
    ("layers", lambda cfg: ", ".join(cfg.get("layers") or [])),
    ("probe", _probe),
)


def describe_fields(run) -> dict[str, str]:
    """The fields FIELDS names, for one row of Store.runs()."""
    cfg, models = json_cell(run.get("config_json")), json_cell(run.get("models_json"))
    out = {}
    for name, fn in FIELDS:
        try:
            out[name] = fn(cfg, models) if name == "labeller" else fn(cfg)
        except (AttributeError, TypeError, ValueError):
            out[name] = ""
    return out


def differences(runs: pd.DataFrame) -> dict[str, str]:
    """{run_id: 'concepts common-10k · similarity wpmi'}: each run by the fields whose values differ
    between the runs given (all of them compared at once). Runs alike in every field are told apart by
    their creation time; a lone run is described by its concept set."""
    if runs.empty:
        return {}
    fields = {r["run_id"]: describe_fields(r) for r in runs.to_dict("records")}
    differing = [name for name, _ in FIELDS if len({f[name] for f in fields.values()}) > 1]
    if len(runs) == 1:
        differing = ["concepts"]
    out = {}
    for r in runs.to_dict("records"):
        f = fields[r["run_id"]]
        parts = [f"{name} {f[name]}" for name in differing if f[name]]
        twins = [o for o, g in fields.items() if o != r["run_id"] and all(g[n] == f[n] for n in differing)]
        if twins or not parts:
            parts.append(f"made {str(r.get('created_at'))[:16]}")
        out[r["run_id"]] = " · ".join(parts)
    return out


def picker_label(run_id: str, name: str, difference: str) -> str:
    """What a run picker shows: the difference first (a narrow picker cuts the end), then the run's name
    unless the name says nothing more, then the id's start."""
    name = str(name or "").strip()
    head = difference or name or run_id[:8]
    if name and name != head:
        head = f"{head} · {name}"
    return f"{head}  ({run_id[:8]})"


def check_name(name: str) -> str:
    """A new name for a run: trimmed, not empty, one line, at most MAX_NAME characters."""
    name = " ".join(str(name or "").split())
    if not name:
        raise ClipevalError("a run name cannot be empty")
    if len(name) > MAX_NAME:
        raise ClipevalError(f"a run name has at most {MAX_NAME} characters (this one has {len(name)})")
    return name
