"""Weight downloads (made on the driver's worker thread) shown in a progress dialog on the main thread."""

import slicer

from IBISAgentLib.models.weights import DownloadProgress


class DownloadDialog:
    def __init__(self):
        self.progress = DownloadProgress()
        self.dialog = None

    def tqdm_class(self):
        return self.progress.tqdm_class()

    def show(self):
        if self.progress.latest is None:
            return
        _, done, total, _ = self.progress.latest
        if self.dialog is None:
            self.dialog = slicer.util.createProgressDialog(windowTitle="IBISAgent: downloading model weights")
        self.dialog.maximum = max(total, 1)
        self.dialog.value = min(done, self.dialog.maximum)
        self.dialog.labelText = self.progress.text

    def close(self):
        if self.dialog is not None:
            self.dialog.close()
            self.dialog = None
        self.progress.clear()
