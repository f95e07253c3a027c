"""The panel's segment list and hand tools (``HandTools`` holds their events)."""

from __future__ import annotations

from typing import Any

from trame.widgets import html
from trame.widgets import vuetify3 as v

SCISSORS_ITEMS = [
    {"title": "Erase inside", "value": "erase_inside"},
    {"title": "Erase outside", "value": "erase_outside"},
    {"title": "Fill inside", "value": "fill_inside"},
    {"title": "Fill outside", "value": "fill_outside"},
]
_SMALL = "font-size: 0.85rem; background: transparent; color: inherit;"


def build_segments(tools: Any) -> None:
    """Each segment: show or hide, colour, name, opacity, delete. Then the tools that edit the target segment
    by hand; every edit is one step of the page's Undo."""
    html.Div("Segments", classes="text-subtitle-2")
    with html.Div(raw_attrs=['role="list"', 'aria-label="Segments"'], classes="d-flex flex-column"):
        html.Div("none yet", v_if="!ia_segment_rows.length", classes="text-body-2")
        with html.Div(
            v_for="row in ia_segment_rows",
            key="row.value",
            raw_attrs=['role="listitem"'],
            classes="d-flex align-center",
            style="gap: 4px",
        ):
            v.VBtn(
                icon=("row.visible ? 'mdi-eye' : 'mdi-eye-off'",),
                size="x-small",
                variant="text",
                click=(tools.on_visible, "[row.value]"),
                raw_attrs=[":aria-label=\"(row.visible ? 'Hide ' : 'Show ') + row.name\""],
            )
            html.Input(
                type="color",
                change=(tools.on_color, "[row.value, $event.target.value]"),
                raw_attrs=[':value="row.color"', ":aria-label=\"'Colour of ' + row.name\""],
                style="width: 24px; height: 20px; border: none; padding: 0;" + _SMALL,
            )
            html.Input(
                change=(tools.on_rename, "[row.value, $event.target.value]"),
                raw_attrs=[':value="row.name"', ":aria-label=\"'Name of ' + row.name\""],
                style="flex: 1 1 auto; min-width: 0; border-bottom: 1px solid #666;" + _SMALL,
            )
            html.Input(
                type="range",
                min=0,
                max=1,
                step=0.1,
                change=(tools.on_opacity, "[row.value, $event.target.value]"),
                raw_attrs=[':value="row.opacity"', ":aria-label=\"'Opacity of ' + row.name\""],
                style="width: 70px;",
            )
            v.VBtn(
                icon="mdi-delete",
                size="x-small",
                variant="text",
                click=(tools.on_delete, "[row.value]"),
                raw_attrs=[":aria-label=\"'Delete ' + row.name\""],
            )
    html.Div("Target segment: {{ ia_segment_voxels }}", v_if="ia_segment_voxels", classes="text-body-2 ia-voxels")
    with html.Div(classes="d-flex flex-wrap align-center", style="gap: 6px"):
        with v.VBtnToggle(v_model=("ia_tool",), density="compact", variant="outlined", disabled=("ia_busy",)):
            v.VBtn("Paint", value="paint", prepend_icon="mdi-brush")
            v.VBtn("Erase", value="erase", prepend_icon="mdi-eraser")
            v.VBtn("Scissors", value="scissors", prepend_icon="mdi-content-cut")
        v.VTextField(
            label="Brush (mm)",
            v_model=("ia_brush_mm",),
            v_if="ia_tool === 'paint' || ia_tool === 'erase'",
            type="number",
            density="compact",
            hide_details=True,
            style="max-width: 110px",
        )
        v.VSelect(
            label="Scissors",
            v_model=("ia_scissors",),
            v_if="ia_tool === 'scissors'",
            items=("ia_scissors_items", SCISSORS_ITEMS),
            density="compact",
            hide_details=True,
            style="max-width: 160px",
        )
    with html.Div(classes="d-flex flex-wrap align-center", style="gap: 6px"):
        v.VBtn("Keep largest part", size="small", click=tools.on_keep_largest, disabled=("ia_busy",))
        v.VBtn("Remove parts under", size="small", click=tools.on_remove_small, disabled=("ia_busy",))
        v.VTextField(
            label="voxels",
            v_model=("ia_island_min",),
            type="number",
            density="compact",
            hide_details=True,
            style="max-width: 100px",
        )
