"""The backend choice as the clinician set it in the module ("Models and server"), kept in Slicer's settings;
the server token only in memory, never on disk."""

import os

import qt

from IBISAgentLib.workflow import BackendChoice

PREFIX = "IBISAgent/"
TOKEN_ENV = "IBISAGENT_TOKEN"
FIELDS = ("server", "mllm", "sam2", "sam2_variant", "propagator", "precision")
_token = {"value": None}  # typed in the module this session; the effect uses it too


def set_token(token):
    _token["value"] = token or None


def stored_fields():
    """What the module's fields show: whether a server is used, and each field's text."""
    settings = qt.QSettings()
    remote = settings.value(PREFIX + "remote", "false") in (True, "true")
    return remote, {name: settings.value(PREFIX + name, "") for name in FIELDS}


def save(remote, fields):
    settings = qt.QSettings()
    settings.setValue(PREFIX + "remote", "true" if remote else "false")
    for name in FIELDS:
        settings.setValue(PREFIX + name, fields.get(name, "").strip())


def load():
    """The stored choice, with the token typed in the module (else IBISAGENT_TOKEN)."""
    remote, fields = stored_fields()
    if not remote:
        fields["server"] = ""
    return BackendChoice.from_settings(fields, token=_token["value"] or os.environ.get(TOKEN_ENV))
