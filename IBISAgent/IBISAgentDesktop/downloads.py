"""Weight downloads (made on the driver's worker thread) shown in a progress dialog on the main thread."""

import queue

import slicer


class DownloadProgress:
    def __init__(self):
        self.updates = queue.Queue()
        self.dialog = None

    def tqdm_class(self):
        """A tqdm class that reports each update to this object's queue."""
        from tqdm.auto import tqdm

        sink = self.updates

        class Reporting(tqdm):
            def update(self, n=1):
                super().update(n)
                sink.put((self.desc or "model weights", self.n, self.total or 0, self.unit))

        return Reporting

    def show(self):
        latest = None
        while not self.updates.empty():
            latest = self.updates.get_nowait()
        if latest is None:
            return
        name, done, total, unit = latest
        if self.dialog is None:
            self.dialog = slicer.util.createProgressDialog(windowTitle="IBISAgent: downloading model weights")
        self.dialog.maximum = max(total, 1)
        self.dialog.value = min(done, self.dialog.maximum)
        if unit == "B":
            self.dialog.labelText = f"{name}: {done / 2**20:.0f} of {total / 2**20:.0f} MiB"
        else:
            self.dialog.labelText = f"{name}: {done} of {total or '?'} {unit}"

    def close(self):
        self.show()
        if self.dialog is not None:
            self.dialog.close()
            self.dialog = None
