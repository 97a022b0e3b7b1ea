"""The grid run kind in the portal: one module per concern, their public names re-exported.

``data`` (constants, ``GridData``, labels), ``colours`` (the Glasbey palette
and token colour assignment), ``figures`` (the map
figure, legend, cell details), ``export`` (JSON and PNG), ``form`` (the
New-run form) and ``page`` (the run page's layout and callbacks; importing
the package registers them). ``webapp.views.grid`` is the one place callers
import from.
"""

from webapp.views.grid.data import (  # noqa: F401  re-exported
    COLOR_MODES,
    DEFAULT_SIZE,
    FONT_CANDIDATES,
    HOVER_LINES,
    HOVER_TOP1_CELLS,
    KIND,
    LEGEND_ROWS,
    MAP_HEIGHT,
    MAX_TEXT_SIDE,
    PALETTE,
    PALETTE_RGB,
    PLANES,
    PLOT_PX,
    PNG_CELL_RANGE,
    PNG_MAX_SIDE,
    PNG_TARGET_SIDE,
    SCALES,
    STATE_COUNT,
    GridData,
    assign_colour_slots,
    axis_titles,
    cell_label,
    cell_rgb,
    cell_values,
    describe,
    discrete_colorscale,
    load_grid,
    pid,
    scale_rgb,
    text_is_dark,
    token_label,
    token_palette_index,
    value_range,
)
from webapp.views.grid.export import (  # noqa: F401  re-exported
    default_cell_px,
    export_document,
    png_cell_px,
    token_map_image,
    token_map_png,
)
from webapp.views.grid.figures import (  # noqa: F401  re-exported
    cell_at,
    cell_details,
    full_window,
    heatmap_style,
    heatmap_trace,
    hover_lines,
    hover_texts,
    index_range,
    legend_component,
    legend_entries,
    map_patch,
    share_text,
    text_props,
    token_map_figure,
    window_cells,
    window_from_relayout,
)
from webapp.views.grid.form import (  # noqa: F401  re-exported
    form_fields,
    params_from_form,
    parse_prompts,
    parse_run_ids,
    split_run_ids,
)
from webapp.views.grid.page import map_controls, map_part, render, side_part, summary_rows  # noqa: F401
