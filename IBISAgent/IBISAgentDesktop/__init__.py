"""The desktop skin's helpers (Qt and the running Slicer application): the shared driver and its poll timer,
model settings, installs and consent, download progress, correction placement, and the Segment Editor
writer. The workflow itself lives in IBISAgentLib.workflow; the scene side in IBISAgentMRML."""
