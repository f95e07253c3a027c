"""IBISAgent in the browser: trame-slicer's views over Slicer's own scene, and a side panel that renders the
workflow driver's state and forwards presses and clicks to it. No workflow lives here (that is
IBISAgentLib.workflow.WorkflowDriver); the scene side goes through the MRML adapter (IBISAgentMRML).

``ibisagent web`` (main.py) serves it; app.py assembles the page, scene.py owns volumes, views and segments,
bridge.py drives the driver, panel.py draws the controls, clicks.py and saving.py do one job each."""
