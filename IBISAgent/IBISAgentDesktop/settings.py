"""The backend choice as the clinician set it in the module ("Models and server"), kept in Slicer's settings;
the server token only in memory, never on disk."""

import os

import qt

from IBISAgentLib.workflow import BackendChoice

PREFIX = "IBISAgent/"
TOKEN_ENV = "IBISAGENT_TOKEN"
_token = {"value": None}  # typed in the module this session; the effect uses it too


def set_token(token):
    _token["value"] = token or None


def load():
    """The stored choice, with the token typed in the module (else IBISAGENT_TOKEN)."""
    settings = qt.QSettings()
    stored = {name: settings.value(PREFIX + name, "") for name in ("server", "mllm", "sam2")}
    if settings.value(PREFIX + "remote", "false") not in (True, "true"):
        stored["server"] = ""
    return BackendChoice.from_settings(stored, token=_token["value"] or os.environ.get(TOKEN_ENV))


def save(remote, server, mllm, sam2):
    settings = qt.QSettings()
    settings.setValue(PREFIX + "remote", "true" if remote else "false")
    for name, value in (("server", server), ("mllm", mllm), ("sam2", sam2)):
        settings.setValue(PREFIX + name, value.strip())


def stored_fields():
    """What the module's fields show: (remote, server, mllm, sam2)."""
    settings = qt.QSettings()
    remote = settings.value(PREFIX + "remote", "false") in (True, "true")
    return remote, *(settings.value(PREFIX + name, "") for name in ("server", "mllm", "sam2"))
