"""Probe a unit live, in the Neuron explorer: upload an image or pick a probe image; the run's target
network (loaded once per run and cached) reads the unit on it."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import streamlit as st
import torch

from clipeval.datasets.probe import load_rgb
from clipeval.dissect.live import LiveProbe, TargetUnavailable
from clipeval.dissect.maps import overlay, shrink, view_note
from clipeval.errors import ClipevalError
from clipeval.ui import data, widgets
from clipeval.ui.maps import colour_bar, colour_range, resolution_text


@st.cache_resource(max_entries=2, show_spinner="Loading the run's target network (once) ...")
def _probe(path: str, run_id: str) -> LiveProbe | str:
    try:
        return LiveProbe(data.open_store(path), run_id)
    except TargetUnavailable as e:
        return str(e)


def live_probe(run_id: str) -> LiveProbe | str:
    """The cached LiveProbe of a run, or the reason its target cannot be loaded here."""
    data.store()
    return _probe(data.db_path(), run_id)


def probe_section(ctx, layer: str, unit: int) -> None:
    st.subheader("Probe this unit with an image")
    probe = live_probe(ctx.run_id)
    if isinstance(probe, str):
        st.info(f"Live probing is not available for this run: {probe}")
        return
    c = st.columns([2, 1])
    # the uploader is drawn when asked for: it loads its own scripts into every first view of the page
    ask = c[0].expander("Upload an image of your own", key="live_upload_open", on_change="rerun")
    upload = (
        ask.file_uploader("Upload an image", type=["png", "jpg", "jpeg", "webp", "bmp"], key="live_upload")
        if ask.open
        else None
    )
    n = int(ctx.run.get("n_images") or 0)
    images = data.neuron_images(ctx.run_id, layer, unit)
    top = images[images["kind"] == "top"] if len(images) else images
    first = int(top["image_id"].iloc[0]) if len(top) else 0  # a real image the unit fires on, not image 0
    widgets.drop_infinite_url_number("live_image")
    pick = c[1].number_input(
        f"or a probe image (0-{max(n - 1, 0)})",
        min_value=0,
        max_value=max(n - 1, 0),
        value=None,
        placeholder=f"{first}: its top image",
        key="live_image",
        bind="query-params",
        help="Any image of the run's probe set, by its id; empty: the unit's most activating probe image.",
    )
    if upload is not None:
        try:
            upload.seek(0)  # decoded as the probe pass decodes a file (an UploadedFile is a named BytesIO)
            image, what = load_rgb(upload), f"the uploaded {upload.name}"
            key = ("upload", hashlib.sha256(upload.getvalue()).hexdigest())
        except ClipevalError as e:  # not an image, or one too large: say so, do not crash the page
            st.error(str(e))
            return
    else:
        chosen = first if pick is None else int(pick)
        row = data.probe_image(ctx.run_id, ctx.run.get("probe_fingerprint") or "", chosen)
        if row is None or not Path(row["path"]).is_file():
            st.warning(f"Probe image {chosen} is not on this machine any more; upload an image instead.")
            return
        try:
            image = load_rgb(row["path"])
        except ClipevalError as e:
            st.error(str(e))
            return
        what = f"probe image {chosen}" + (" (the unit's top image)" if pick is None and len(top) else "")
        key = ("probe", chosen)
    reading = probe.read(image, layer, unit, key=key)
    thumb = io.BytesIO()
    small = image.copy()
    small.thumbnail((256, 256))
    small.save(thumb, "JPEG", quality=90)
    cols = st.columns([1, 1, 2])
    cols[0].image(data.square(thumb.getvalue()), caption=what, width="stretch")
    if reading.map is not None:
        stored = data.activation_maps(ctx.run_id, layer, unit)
        # at the stored maps' resolution (max-pooled as the probe pass pools them), so both say the same
        shown = shrink(torch.from_numpy(np.ascontiguousarray(reading.map))[None])[0].numpy()
        # the colour scale of the top images' overlays above, widened if this image goes beyond it
        lo, hi = colour_range(stored) if len(stored) else (0.0, float(shown.max()))
        hi = max(hi, float(shown.max()))
        silent = float(shown.max()) <= lo
        view, where = view_note(probe.view)
        cols[1].image(
            data.square(overlay(thumb.getvalue(), shown, 0.6, (lo, hi), view)),
            width="stretch",
            caption=f"where it fires: {resolution_text(*shown.shape, reading.map.shape)} {where}"
            + ("; no cell above the scale's 0 on this image" if silent else ""),
        )
        cols[1].markdown(colour_bar(lo, hi), unsafe_allow_html=True)
    else:
        cols[1].caption("This layer gives one value per image (no spatial map).")
    top = top["activation"] if len(top) else top
    with cols[2]:
        st.metric(f"{layer} / unit {unit} activation", f"{reading.activation:.3f}")
        st.metric(
            "Percentile in the probe",
            f"{reading.percentile:.1f}",
            help="Share of the run's probe images on which the unit is less active, in percent (equal "
            "ones count half); the caption says how it was found.",
        )
        baseline = f"The unit's top {len(top)} probe images: {top.min():.3f} to {top.max():.3f}. " if len(top) else ""
        where = f"{probe.target_name} on {probe.device}" + (f" ({probe.device_note})" if probe.device_note else "")
        st.caption(
            f"{baseline}Percentile {reading.percentile_how}; pooling {probe.pooling}, as in the run. "
            f"Network: {where}; this reading took {1000 * reading.seconds:.0f} ms (preprocessing and one "
            f"forward pass, kept for this image and layer; loading the network took "
            f"{probe.load_seconds:.1f} s once)."
        )
