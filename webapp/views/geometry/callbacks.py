"""The geometry run page's callbacks: linked selection, details, lens decode, redraw, re-project, download.

Invariants (see ``webapp.views.geometry.page`` for the layout they serve): a
selection is a list of point rows; highlight traces are patched, never whole
figures; the web process never runs a model (a decode or a re-projection is a
child run); user text is shown as text children only.
"""

from __future__ import annotations

from typing import Any

import dash
from dash import Input, Output, State, callback, clientside_callback, ctx, dcc, html
from flask_login import current_user

from webapp.views.geometry import figures as gf
from webapp.views.geometry.details import (
    decoded_lens,
    point_details,
    rows_to_decode,
    selection_from_event,
)
from webapp.views.geometry.export import html_bundle_zip
from webapp.views.geometry.page import (
    ATTN_MLP_ID,
    COLOR_ID,
    DETAILS_ID,
    FIGURE_IDS,
    FIGURES,
    HIDE0_ID,
    HIGHLIGHT_STORE_ID,
    LAYER_EVOLUTION_ID,
    LAYERS_ID,
    LENS_BUTTON_ID,
    LENS_PENDING_ID,
    LENS_POLL_ID,
    LENS_STATUS_ID,
    RUN_STORE_ID,
    SELECTABLE_IDS,
    SELECTION_ID,
    _run_data,
)

# --------------------------------------------------------------------------- callbacks


@callback(
    Output(SELECTION_ID, "data"),
    *[Input(fid, prop) for fid in SELECTABLE_IDS for prop in ("clickData", "selectedData")],
    prevent_initial_call=True,
)
def _select(*events):
    trigger = ctx.triggered[0] if ctx.triggered else {}
    return selection_from_event(trigger.get("value"))


@callback(
    *[Output(fid, "figure", allow_duplicate=True) for fid in FIGURE_IDS],
    Output(DETAILS_ID, "children"),
    Input(SELECTION_ID, "data"),
    State(RUN_STORE_ID, "data"),
    State(HIGHLIGHT_STORE_ID, "data"),
    prevent_initial_call=True,
)
def _highlight(selection, run_info, highlight_index):
    summary, arrays, _ = _run_data((run_info or {})["run"])
    views = {view.id: view for view in FIGURES}
    patches = []
    for fid in FIGURE_IDS:
        index = (highlight_index or {}).get(fid)
        if index is None:
            patches.append(dash.no_update)
            continue
        patch = dash.Patch()
        for axis, values in gf.highlight(views[fid].kind, arrays, summary, selection or []).items():
            patch["data"][index][axis] = values
        patches.append(patch)
    return (*patches, point_details(arrays, summary, selection, decoded_lens((run_info or {})["run"])))


@callback(
    Output(LENS_PENDING_ID, "data"),
    Output(LENS_POLL_ID, "disabled"),
    Output(LENS_STATUS_ID, "children"),
    Input(LENS_BUTTON_ID, "n_clicks"),
    State(SELECTION_ID, "data"),
    State(RUN_STORE_ID, "data"),
    prevent_initial_call=True,
)
def _decode(clicks, selection, run_info):
    from webapp import runs_service

    if not clicks:
        return dash.no_update, dash.no_update, dash.no_update
    run_id = (run_info or {})["run"]
    summary, arrays, params = _run_data(run_id)
    rows = rows_to_decode(arrays, selection, decoded_lens(run_id))
    if not rows:
        return None, True, "Every selected point is decoded already."
    raw = {"source_run": run_id, "model": params.get("model") or summary.get("model", ""), "rows": rows}
    try:
        child = runs_service.submit_run(current_user.id, "geometry_lens", raw, parent_id=run_id,
                                        title=f"logit lens of {len(rows)} points of {run_id}")
    except runs_service.SubmissionError as exc:
        return None, True, html.Span("; ".join(exc.messages), className="text-danger")
    return child.id, False, f"Decoding {len(rows)} point(s) on the model: run {child.id} queued…"


@callback(
    Output(DETAILS_ID, "children", allow_duplicate=True),
    Output(LENS_PENDING_ID, "data", allow_duplicate=True),
    Output(LENS_POLL_ID, "disabled", allow_duplicate=True),
    Output(LENS_STATUS_ID, "children", allow_duplicate=True),
    Input(LENS_POLL_ID, "n_intervals"),
    State(LENS_PENDING_ID, "data"),
    State(SELECTION_ID, "data"),
    State(RUN_STORE_ID, "data"),
    prevent_initial_call=True,
)
def _poll_decode(_n, pending, selection, run_info):
    from webapp import runs_service

    if not pending:
        return dash.no_update, None, True, dash.no_update
    try:
        child = runs_service.get_run(pending)
    except runs_service.RunNotFound:
        return dash.no_update, None, True, "The decoding run has gone."
    if child.status in ("queued", "running"):
        stage = child.stage or child.status
        return dash.no_update, pending, False, f"Decoding on the model (run {child.id}): {stage}…"
    if child.status != "succeeded":
        return (dash.no_update, None, True,
                html.Span(f"Decoding run {child.id} {child.status}: {child.error or ''}", className="text-danger"))
    run_id = (run_info or {})["run"]
    summary, arrays, _ = _run_data(run_id)
    return (point_details(arrays, summary, selection, decoded_lens(run_id)), None, True,
            html.Span(["Decoded by run ", dcc.Link(child.id, href=f"/runs/{child.id}"), "."]))


@callback(
    Output(LAYER_EVOLUTION_ID, "figure", allow_duplicate=True),
    Output(ATTN_MLP_ID, "figure", allow_duplicate=True),
    Input(COLOR_ID, "value"),
    Input(LAYERS_ID, "value"),
    Input(HIDE0_ID, "value"),
    State(RUN_STORE_ID, "data"),
    State(SELECTION_ID, "data"),
    prevent_initial_call=True,
)
def _redraw(color_by, layers, hide0, run_info, selection):
    summary, arrays, _ = _run_data((run_info or {})["run"])
    shown = (int(layers[0]), int(layers[1])) if layers else None
    evolution = gf.layer_evolution_figure(arrays, summary, color_by=color_by or "layer", layers=shown,
                                          hide_position0=bool(hide0))
    attn = gf.attention_mlp_figure(arrays, summary, layers=shown, hide_position0=bool(hide0))
    for fig, kind in ((evolution, "layer_evolution"), (attn, "attention_mlp")):
        fig.data[fig.layout.meta["highlight_trace"]].update(gf.highlight(kind, arrays, summary, selection or []))
    return evolution, attn


STEP_JS = """
function(prev, next) {
    const trigger = (dash_clientside.callback_context.triggered[0] || {}).prop_id || "";
    const delta = trigger.startsWith("geometry-anim-prev") ? -1 : 1;
    const gd = document.querySelector("#geometry-animation .js-plotly-plot");
    if (!gd || !gd._fullLayout || !gd._fullLayout.sliders || !gd._fullLayout.sliders.length) {
        return dash_clientside.no_update;
    }
    const slider = gd._fullLayout.sliders[0];
    const steps = slider.steps;
    const at = Math.min(steps.length - 1, Math.max(0, (slider.active || 0) + delta));
    Plotly.animate(gd, [steps[at].label], {mode: "immediate", transition: {duration: 0},
                                           frame: {duration: 0, redraw: true}});
    return at;
}
"""

clientside_callback(STEP_JS, Output("geometry-anim-prev", "title"),
                    Input("geometry-anim-prev", "n_clicks"), Input("geometry-anim-next", "n_clicks"),
                    prevent_initial_call=True)


@callback(
    Output("geometry-location", "href"),
    Output("geometry-rp-message", "children"),
    Input("geometry-rp-submit", "n_clicks"),
    State(RUN_STORE_ID, "data"),
    State("geometry-rp-reduction", "value"),
    State("geometry-rp-dims", "value"),
    State("geometry-rp-unit", "value"),
    State("geometry-rp-exclude0", "value"),
    State("geometry-rp-components", "value"),
    State("geometry-rp-layer-start", "value"),
    State("geometry-rp-layer-stop", "value"),
    State("geometry-rp-average", "value"),
    prevent_initial_call=True,
    running=[(Output("geometry-rp-submit", "disabled"), True, False)],
)
def _reproject(clicks, run_info, reduction, dims, unit, exclude0, components, start, stop, average):
    from webapp import runs_service

    if not clicks:
        return dash.no_update, dash.no_update
    source = (run_info or {}).get("source")
    try:
        summary, _, params = _run_data(source)
        raw = reproject_params(source, params.get("model") or summary.get("model", ""), reduction, dims,
                               unit, exclude0, components, start, stop, average)
        submitted = runs_service.submit(current_user.id, "geometry_reproject", raw,
                                       title=f"re-projection of {source}", parent_id=source)
    except runs_service.SubmissionError as exc:
        return dash.no_update, html.Span("; ".join(exc.messages), className="text-danger")
    except (LookupError, ValueError) as exc:
        return dash.no_update, html.Span(str(exc), className="text-danger")
    child = submitted.run  # an identical re-projection that succeeded before is reused
    done = "Opened the identical" if submitted.reused else "Submitted"
    return f"/runs/{child.id}", html.Span(f"{done} {child.id}.", className="text-success")


def reproject_params(source: str, model: str, reduction: Any, dims: Any, unit: Any, exclude0: Any,
                     components: Any, start: Any, stop: Any, average: Any) -> dict[str, Any]:
    """Raw ``geometry_reproject`` params from the panel's values (validated again by the service)."""
    if not components:
        raise ValueError("choose at least one component")
    return {
        "source_run": source, "model": model, "reduction": reduction or "pca", "dims": int(dims or 3),
        "unit_normalise": bool(unit), "exclude_position0": bool(exclude0), "components": list(components),
        "layer_start": int(start or 0), "layer_stop": int(stop) if stop not in (None, "") else None,
        "average": average or "none",
    }


@callback(
    Output("geometry-download", "data"),
    Input("geometry-download-html", "n_clicks"),
    State(RUN_STORE_ID, "data"),
    prevent_initial_call=True,
    running=[(Output("geometry-download-html", "disabled"), True, False)],
)
def _download(clicks, run_info):
    if not clicks:
        return dash.no_update
    run_id = (run_info or {})["run"]
    summary, arrays, _ = _run_data(run_id)
    return dcc.send_bytes(html_bundle_zip(run_id, summary, arrays), f"latent-atlas-{run_id}-html.zip")
