"""A real PACS for the tests: Debian's Orthanc with its DICOMweb plugin, started as a plain process on a free
loopback port with its own storage folder and HTTP basic auth, stopped by its process id."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import requests

ORTHANC = shutil.which("Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
USER, PASSWORD = "radiologist", "s3cret-pass"
REJECTING = "P-REJECT"  # a patient whose SEGs this PACS refuses to store: a store that fails, for real
REJECT_LUA = f"""
function ReceivedInstanceFilter(dicom, origin, info)
  return not (dicom.Modality == 'SEG' and dicom.PatientID == '{REJECTING}')
end
"""


@dataclass(frozen=True)
class Orthanc:
    root: str  # the REST root, e.g. http://127.0.0.1:PORT
    auth: tuple[str, str]

    @property
    def dicomweb(self) -> str:
        return f"{self.root}/dicom-web"

    def upload(self, files: list[Path]) -> None:
        """Store files through Orthanc's own REST API (not the code under test)."""
        for path in files:
            response = requests.post(f"{self.root}/instances", data=path.read_bytes(), auth=self.auth, timeout=30)
            response.raise_for_status()

    def get(self, path: str) -> requests.Response:
        response = requests.get(f"{self.root}{path}", auth=self.auth, timeout=30)
        response.raise_for_status()
        return response

    def file(self, sop_instance_uid: str) -> bytes:
        """One stored instance's file, found by its SOP Instance UID through Orthanc's own REST API."""
        response = requests.post(f"{self.root}/tools/lookup", data=sop_instance_uid, auth=self.auth, timeout=30)
        response.raise_for_status()
        (found,) = [item for item in response.json() if item["Type"] == "Instance"]
        return self.get(f"/instances/{found['ID']}/file").content

    def instance_count(self) -> int:
        return int(self.get("/statistics").json()["CountInstances"])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running_orthanc(folder: Path) -> Iterator[Orthanc]:
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = {
        "Name": "IBISAgent tests",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "HttpPort": port,
        "DicomServerEnabled": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: PASSWORD},
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "LuaScripts": [str(folder / "filter.lua")],
    }
    (folder / "filter.lua").write_text(REJECT_LUA)
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = (folder / "orthanc.log").open("wb")
    process = subprocess.Popen([ORTHANC, str(folder / "orthanc.json")], cwd=folder, stdout=log, stderr=log)
    server = Orthanc(f"http://127.0.0.1:{port}", (USER, PASSWORD))
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"Orthanc exited at start: {(folder / 'orthanc.log').read_text()[-2000:]}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{server.dicomweb}/studies", auth=server.auth, timeout=2).ok:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("Orthanc did not answer within 30 s")
            time.sleep(0.1)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
