"""The side panel (vuetify3): volume, target segment, instruction, agent's view, the commands, correction
mode, propagation, save, and what the driver reports (status, markers, the reasoning log)."""

from __future__ import annotations

from typing import Any

from trame.widgets import html
from trame.widgets import vuetify3 as v

from .pacs_browser import build_pacs
from .scene import VIEW_NAMES
from .segments_panel import build_segments
from .views import LAYOUTS, window_items

DEFAULTS = {
    "ia_volume_name": "",
    "ia_segments": [],
    "ia_segment": "",
    "ia_new_segment": "",
    "ia_instruction": "",
    "ia_view": "Red",
    "ia_mode": None,
    "ia_busy": False,
    "ia_status": "Ready.",
    "ia_log": [],
    "ia_markers": [],
    "ia_message": "",
    "ia_progress": 0,
    "ia_progress_text": "",
    "ia_has_session": False,
    "ia_mask_area": 0,
    "ia_slice_where": "",
    "ia_first": 0,
    "ia_last": 0,
    "ia_stop_after_empty": 3,
    "ia_largest": False,
    "ia_check": False,
    "ia_slices": [],  # the last propagation's slices: {index, area, flags, height} for the strip
    "ia_shown": "",  # the slice the agent's view was last moved to from the strip
    "ia_saved": "",
    "ia_downloads": [],
    "ia_clients": 0,
    "ia_max_turns": 20,
    "ia_consent_host": "",
    "ia_models": "",
    "ia_weights_missing": "",  # one line when the local models are not on this computer
    "ia_demo": False,  # the tiny random-weight models stand in for them
    "ia_preparing": "",  # work before a run, shown at once (building the demo models)
    "ia_saving": False,
    "ia_details": "",  # the whole text behind a one-line notice, shown in a dialog
}


def build_panel(actions: Any, bridge: Any) -> None:
    """``actions`` (the app) has on_upload, on_add_segment and on_save; the agent's buttons go straight to
    ``bridge`` (on_run, on_step, on_continue, on_undo, on_propagate, on_cancel); the download trigger is
    registered as 'ia_download'. What a run needs (the instruction, the commands, corrections, the status and
    the reasoning) comes first and fits 1280 x 800 without scrolling; the set-up, 3D and saving follow."""
    with html.Div(classes="pa-3 d-flex flex-column", style="gap: 8px"):
        _notices(bridge)
        html.Div("Volume: {{ ia_volume_name || 'none: open one below' }}", classes="text-body-2")
        v.VFileInput(
            label="Open volume (NIfTI, NRRD, MHA, DICOM files)",
            multiple=True,
            density="compact",
            hide_details=True,
            prepend_icon="mdi-folder-open",
            accept=".nii,.gz,.nrrd,.nhdr,.mha,.mhd,.raw,.dcm,application/dicom",
            disabled=("ia_busy || !!ia_pacs_working",),
            change=(actions.on_upload, "[$event.target.files]"),
        )
        v.VTextarea(
            label="Instruction",
            v_model=("ia_instruction",),
            rows=2,
            auto_grow=True,
            max_rows=4,
            density="compact",
            hide_details=True,
            placeholder="segment the liver tumor",
        )
        _commands(bridge)
        html.Div(
            "Agent on {{ ia_slice_where }}; mask on that slice: {{ ia_mask_area }} px",
            v_if="ia_slice_where",
            classes="text-body-2 ia-mask-area",
        )
        html.Div("{{ ia_status }}", raw_attrs=['role="status"'], classes="text-body-1 font-weight-medium")
        v.VProgressLinear(indeterminate=True, v_if="ia_busy && !ia_progress_text", height=3, classes="ia-busy")
        with html.Div(
            v_if="ia_markers.length", raw_attrs=['role="list"', 'aria-label="Markers"'], classes="text-body-2"
        ):
            html.Span(
                "{{ m.label }} ({{ m.source }})",
                v_for="m in ia_markers",
                key="m.label",
                raw_attrs=['role="listitem"', ':title="m.ras"'],
                classes="mr-2",
            )
        with html.Div(
            raw_attrs=['role="log"', 'aria-label="Reasoning"', 'aria-live="polite"'],
            style="height: 26vh; min-height: 96px; overflow-y: auto; white-space: pre-wrap; font-size: 0.85rem;",
            classes="pa-2 border rounded",
        ):
            html.Div("{{ line }}", v_for="(line, i) in ia_log", key="i", classes="mb-1")
        _set_up(actions)
        build_pacs(actions)
        build_segments(actions.tools)
        _propagation(bridge)
        _saving(actions)
        _dialogs(bridge)


def _notices(bridge: Any) -> None:
    """One line each: the shared-scene warning, missing models (with what to do), the demo models' warning,
    work in preparation, and the last error (its whole text on demand)."""
    v.VAlert(
        "All tabs of this page share one scene and one agent session: use one tab per user.",
        v_if="ia_clients > 1",
        type="warning",
        density="compact",
        variant="tonal",
    )
    with v.VAlert(v_if="ia_weights_missing", type="warning", density="compact", variant="tonal"):
        html.Div("{{ ia_weights_missing }}", classes="text-truncate", raw_attrs=[':title="ia_weights_missing"'])
        with html.Div(classes="d-flex flex-wrap", style="gap: 4px"):
            v.VBtn("Details", size="small", variant="text", click=bridge.on_missing_details)
            v.VBtn(
                "Download models",
                size="small",
                variant="text",
                click=bridge.on_download_models,
                raw_attrs=['title="Run downloads them first (needs internet; the IBIS model is about 16 GB)"'],
            )
            v.VBtn(
                "Use demo models",
                size="small",
                variant="text",
                click=bridge.on_demo_models,
                raw_attrs=['title="Tiny random-weight models: everything runs, nothing they do means anything"'],
            )
    v.VAlert(
        "{{ ia_models }}",
        v_if="ia_demo",
        type="warning",
        density="compact",
        variant="outlined",
        classes="ia-demo text-truncate",
    )
    with v.VAlert(v_if="ia_preparing", type="info", density="compact", variant="tonal"):
        html.Div("{{ ia_preparing }}", classes="text-truncate")
        v.VProgressLinear(indeterminate=True, height=3)
    with (
        v.VAlert(
            v_if="ia_message",
            type="error",
            density="compact",
            variant="tonal",
            closable=True,
            click_close="ia_message = ''",
            classes="ia-message",
        ),
        html.Div(classes="d-flex align-center", style="gap: 4px"),
    ):
        html.Div(
            "{{ ia_message.split('\\n')[0] }}",
            classes="text-truncate",
            style="flex: 1 1 auto; min-width: 0",
            raw_attrs=[':title="ia_message"'],
        )
        v.VBtn(
            "Details",
            v_if="ia_message.length > 60 || ia_message.includes('\\n')",
            size="small",
            variant="text",
            click="ia_details = ia_message",
        )


def _commands(bridge: Any) -> None:
    with html.Div(classes="d-flex flex-wrap", style="gap: 6px"):
        v.VBtn("{{ ia_busy ? 'Cancel' : 'Run' }}", click=bridge.on_run, color=("ia_busy ? 'error' : 'primary'",))
        v.VBtn(
            "Find",
            click=bridge.on_find,
            disabled=("ia_busy",),
            raw_attrs=['title="Let the agent find the slice that shows the target, then run there"'],
        )
        v.VBtn("Step", click=bridge.on_step, disabled=("ia_busy",))
        v.VBtn("Continue", click=bridge.on_continue, disabled=("ia_busy || !ia_has_session",))
        v.VBtn("Undo", click=bridge.on_undo, disabled=("ia_busy || !ia_can_undo",))
    with html.Div(classes="d-flex align-center flex-wrap", style="gap: 6px"):
        with v.VBtnToggle(v_model=("ia_mode",), density="compact", divided=True, variant="outlined"):
            v.VBtn("Add point", value="add", disabled=("!ia_has_session",))
            v.VBtn("Remove point", value="remove", disabled=("!ia_has_session",))
        html.Div(
            "Click on the {{ ia_view }} view to {{ ia_mode === 'add' ? 'add to' : 'remove from' }} the mask.",
            v_if="ia_mode",
            classes="text-caption",
        )


def _set_up(actions: Any) -> None:
    with v.VCard(variant="outlined", classes="pa-2 d-flex flex-column", style="gap: 8px"):
        html.Div("Target and agent", classes="text-subtitle-2")
        v.VSelect(
            label="Target segment",
            items=("ia_segments",),
            v_model=("ia_segment",),
            item_title="title",
            item_value="value",
            placeholder="new: named after the instruction",
            persistent_placeholder=True,
            density="compact",
            hide_details=True,
            disabled=("ia_busy",),
        )
        with html.Div(classes="d-flex", style="gap: 6px"):
            v.VTextField(
                label="New segment name",
                v_model=("ia_new_segment",),
                density="compact",
                hide_details=True,
                disabled=("ia_busy || !ia_volume_name",),
            )
            v.VBtn("Add segment", click=actions.on_add_segment, disabled=("ia_busy || !ia_volume_name",))
        with html.Div(classes="d-flex", style="gap: 6px"):
            v.VSelect(
                label="Agent's view",
                items=("ia_views", [{"title": t, "value": k} for k, t in VIEW_NAMES.items()]),
                v_model=("ia_view",),
                item_title="title",
                item_value="value",
                density="compact",
                hide_details=True,
                disabled=("ia_busy",),
            )
            _number("Max turns", "ia_max_turns", disabled=("ia_busy",))
        html.Div("Models: {{ ia_models }}", classes="text-caption")


def _propagation(bridge: Any) -> None:
    with v.VCard(variant="outlined", classes="pa-2"):
        html.Div("Propagate in 3D", classes="text-subtitle-2")
        with html.Div(classes="d-flex", style="gap: 6px"):
            _number("First slice", "ia_first")
            _number("Last slice", "ia_last")
            _number("Stop after empty", "ia_stop_after_empty")
        v.VCheckbox(
            label="Keep the largest connected part",
            v_model=("ia_largest",),
            density="compact",
            hide_details=True,
        )
        v.VCheckbox(
            label="Check: let the agent re-check slices that look wrong",
            v_model=("ia_check",),
            density="compact",
            hide_details=True,
        )
        with html.Div(classes="d-flex align-center", style="gap: 6px"):
            v.VBtn("Propagate", click=bridge.on_propagate, disabled=("ia_busy || !ia_has_session",))
            v.VBtn("Cancel propagation", click=bridge.on_cancel, v_if="ia_busy && ia_progress_text", color="error")
        v.VProgressLinear(
            model_value=("ia_progress",),
            v_if="ia_busy && ia_progress_text",
            height=8,
            color="primary",
            raw_attrs=['aria-label="Propagation progress"'],
        )
        html.Div("{{ ia_progress_text }}", v_if="ia_progress_text", classes="text-caption")
        _slice_strip(bridge)


def _saving(actions: Any) -> None:
    with html.Div(classes="d-flex align-center flex-wrap", style="gap: 6px"):
        v.VBtn("Save", click=actions.on_save, disabled=("ia_busy || !ia_volume_name",), loading=("ia_saving",))
        v.VBtn(
            "Save to PACS",
            v_if="ia_pacs",
            click=actions.on_pacs_save,
            disabled=("ia_busy || !ia_pacs_opened || !!ia_pacs_working",),
            raw_attrs=['title="Store the target segment as a DICOM SEG in the opened series\' study"'],
        )
        v.VBtn(
            "{{ item.name }}",
            v_for="item in ia_downloads",
            key="item.name",
            size="small",
            variant="text",
            prepend_icon="mdi-download",
            click="utils.download(item.name, trigger('ia_download', [item.name]), 'application/octet-stream')",
        )
    html.Div("{{ ia_saved }}", v_if="ia_saved", classes="text-caption")


def _dialogs(bridge: Any) -> None:
    with (
        v.VDialog(model_value=("!!ia_consent_host",), persistent=True, max_width=520),
        v.VCard(title="Send images to a server?"),
    ):
        v.VCardText(
            "IBISAgent will send this volume and your instruction to the server {{ ia_consent_host }}. "
            "Make sure this is allowed for these images."
        )
        with v.VCardActions():
            v.VBtn("Do not send", click=bridge.on_consent_refused)
            v.VBtn("Send", click=bridge.on_consent_given, color="primary")
    with (
        v.VDialog(model_value=("!!ia_details",), max_width=720, update_modelValue="ia_details = ''"),
        v.VCard(title="Details"),
    ):
        v.VCardText("{{ ia_details }}", classes="ia-details", style="white-space: pre-wrap; font-size: 0.85rem;")
        with v.VCardActions():
            v.VBtn("Close", click="ia_details = ''")


def _slice_strip(bridge: Any) -> None:
    """The propagated slices as bars of their mask area, red where something looks wrong; a click on a bar moves
    the agent's view to that slice."""
    with html.Div(v_if="ia_slices.length", classes="mt-2"):
        html.Div("Propagated slices (red: flagged; click to go there) {{ ia_shown }}", classes="text-caption")
        with html.Div(
            raw_attrs=['role="list"', 'aria-label="Propagated slices"'],
            classes="d-flex align-end",
            style="height: 40px; gap: 1px; overflow-x: auto;",
        ):
            html.Div(
                v_for="s in ia_slices",
                key="s.index",
                raw_attrs=[
                    'role="listitem"',
                    ":aria-label=\"'slice ' + s.index + ': ' + s.area + ' px' + (s.flags.length ? ', ' + "
                    "s.flags.join(', ') : '')\"",
                    ":title=\"'slice ' + s.index + ': ' + s.area + ' px ' + s.flags.join(', ')\"",
                    ":class=\"s.flags.length ? 'ia-flagged' : ''\"",
                ],
                style=(
                    "{ flex: '1 0 4px', height: s.height + '%', minHeight: '2px', cursor: 'pointer', "
                    "background: s.flags.length ? '#e53935' : '#43a047' }",
                ),
                click=(bridge.on_goto_slice, "[s.index]"),
            )


def _number(label: str, key: str, **options: Any) -> None:
    """A compact number field bound to the state ``key``; its label is its accessible name."""
    v.VTextField(label=label, v_model=(key,), type="number", density="compact", hide_details=True, **options)


def build_view_controls(app: Any) -> None:
    """The viewer's own controls in the top bar: the window/level preset (and what it is now), the layout, and
    a reset of the views to the whole volume."""
    v.VSpacer()
    with html.Div(classes="d-flex align-center", style="gap: 8px"):
        v.VSelect(
            label="Window",
            items=("ia_windows", window_items()),
            v_model=("ia_window",),
            item_title="title",
            item_value="value",
            density="compact",
            hide_details=True,
            disabled=("ia_busy || !ia_volume_name",),
            style="width: 170px",
        )
        html.Div("{{ ia_window_text }}", classes="text-caption ia-window-text", style="min-width: 150px")
        v.VSelect(
            label="Layout",
            items=("ia_layouts", [{"title": t, "value": k} for k, t in LAYOUTS.items()]),
            v_model=("ia_layout",),
            item_title="title",
            item_value="value",
            density="compact",
            hide_details=True,
            style="width: 160px",
        )
        v.VBtn("Reset views", click=app.on_reset_views, prepend_icon="mdi-fit-to-screen", variant="text")
