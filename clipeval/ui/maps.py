"""Where a unit fires, in the Neuron explorer: its stored activation maps laid over its top images,
with a toggle and an opacity slider (the maps come from the run's probe pass; nothing runs here)."""

from __future__ import annotations

import streamlit as st

from clipeval.dissect.maps import MAP_SIDE, VIRIDIS, decode, overlay, run_view
from clipeval.ui import data


def activation_maps(run_id: str, layer: str, unit: int):
    return data.activation_maps(run_id, layer, unit)


def colour_range(maps) -> tuple[float, float]:
    """One colour scale per unit, so its images compare: from 0 to its strongest cell over its top
    images; cells at or below 0 stay clear (a layer without a ReLU, such as a block's projection, is
    negative where the unit is silent: a scale from its minimum tinted every cell). A unit whose cells
    are all negative gets its own range."""
    hi = float(maps["hi"].max())
    return (0.0, hi) if hi > 0 else (float(maps["lo"].min()), hi)


SCALE_TEXT = (
    "One scale per unit: clear at its left end or below, full colour at its strongest cell on its top images, so "
    "its images compare."
)


def resolution_text(h: int, w: int, layer_hw: tuple[int, int] | None = None) -> str:
    """'Map: 24×24 cells (the layer's 56×56, max-pooled to at most 24×24)': stored maps and the live probe's
    are shown at the same resolution, and say both it and the layer's."""
    layer = f"the layer's {layer_hw[0]}×{layer_hw[1]}" if layer_hw else "the layer's resolution"
    pooled = layer_hw is None or (layer_hw[0], layer_hw[1]) != (h, w)
    how = f"max-pooled to at most {MAP_SIDE}×{MAP_SIDE}" if pooled else "its own resolution"
    return f"Map: {h}×{w} cells ({layer}, {how})"


def layer_grid(shape: str, n_units: int, h: int, w: int) -> tuple[int, int] | None:
    """The layer's own map size from its stored output shape ('(112, 14, 14)', channels first or last) when
    it is the one the stored h x w maps were pooled from; None where the shape does not say (token layers)."""
    try:
        dims = [int(d) for d in shape.strip("()").split(",") if d.strip()]
    except ValueError:
        return None
    if len(dims) != 3 or n_units not in (dims[0], dims[2]):
        return None
    grid = dims[1:] if dims[0] == n_units else dims[:2]
    return (grid[0], grid[1]) if (min(grid[0], MAP_SIDE), min(grid[1], MAP_SIDE)) == (h, w) else None


def colour_bar(lo: float, hi: float) -> str:
    """The overlay's colour scale as a small HTML bar from `lo` to `hi`, with both ends written."""
    stops = ", ".join(f"rgb{c}" for c in VIRIDIS)
    return (
        "<div style='display:flex;align-items:center;gap:0.4rem;font-size:0.8rem' role='img' "
        f"aria-label='colour scale of the activation map, from {lo:.3g} (clear) to {hi:.3g}'>"
        f"<span>{lo:.3g}</span><div style='flex:1;height:0.7rem;border-radius:2px;"
        f"background:linear-gradient(to right, {stops})'></div><span>{hi:.3g}</span></div>"
    )


def where_it_fires(
    run_id: str, fingerprint: str, layer: str, unit: int, thumbs: dict[int, bytes], run: dict
) -> dict[int, bytes]:
    """The toggle and slider; returns `thumbs` with the unit's top images overlaid by their maps, each on the
    region of the image the network saw (the run's recorded preprocessing, `run` its Store.run row)."""
    maps = activation_maps(run_id, layer, unit)
    if maps.empty:
        st.caption(
            "No activation maps stored for this unit: the layer has no spatial layout (a vector per "
            "image), or the run was made before maps were stored (run `clipeval dissect` again with "
            "`--force`)."
        )
        return thumbs
    c = st.columns([1, 2, 3], vertical_alignment="center")
    on = c[0].toggle(
        "Where it fires",
        value=True,
        key="map_on",
        bind="query-params",
        help="Overlay each top image with the unit's activation map on it (before pooling).",
    )
    opacity = c[1].slider("Map opacity", 0.0, 1.0, 0.55, 0.05, key="map_opacity", disabled=not on, bind="query-params")
    h, w = int(maps["h"].iloc[0]), int(maps["w"].iloc[0])
    lo, hi = colour_range(maps)
    view, where = run_view(run)
    c[2].markdown(colour_bar(lo, hi), unsafe_allow_html=True)
    shape = data.layers(run_id).set_index("layer").loc[layer]
    c[2].caption(
        f"{resolution_text(h, w, layer_grid(str(shape['shape']), int(shape['n_units']), h, w))}, upsampled {where}; the image turns grey beneath it. {SCALE_TEXT}"
    )
    if not on:
        return thumbs
    # laid over the thumbnail as stored (its own aspect ratio, where the crop the network saw is known),
    # then letterboxed like the other thumbnails
    raw = data.thumbnails(fingerprint, maps["image_id"], square=False)
    out = dict(thumbs)
    for r in maps.itertuples():
        jpeg = raw.get(int(r.image_id))
        if jpeg:
            out[int(r.image_id)] = data.square(
                overlay(jpeg, decode(r.h, r.w, r.lo, r.hi, r.map), opacity, (lo, hi), view)
            )
    return out
