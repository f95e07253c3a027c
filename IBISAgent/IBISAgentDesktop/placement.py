"""Correction clicks placed in the slice views with Slicer's markups placement mode."""

import slicer


class CorrectionPlacement:
    """While active, each point placed in a view is handed to ``callback`` (world RAS) and removed again."""

    def __init__(self):
        self.node = None
        self.observer = None

    @property
    def active(self):
        return self.node is not None

    def start(self, callback):
        self.stop()
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "IBISAgent correction")
        node.CreateDefaultDisplayNodes()

        def placed(caller, event):
            count = caller.GetNumberOfControlPoints()
            if count:
                ras = tuple(caller.GetNthControlPointPositionWorld(count - 1))
                caller.RemoveAllControlPoints()
                callback(ras)

        self.observer = node.AddObserver(slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, placed)
        self.node = node
        self.keep_active()
        interaction = slicer.app.applicationLogic().GetInteractionNode()
        interaction.SetPlaceModePersistence(1)
        interaction.SetCurrentInteractionMode(slicer.vtkMRMLInteractionNode.Place)

    def keep_active(self):
        """New markups nodes (the agent's markers) become the active place node; take it back."""
        if self.node is not None and self.node.GetScene() is not None:
            selection = slicer.app.applicationLogic().GetSelectionNode()
            selection.SetReferenceActivePlaceNodeID(self.node.GetID())

    def stop(self):
        if self.node is None:
            return
        node, self.node = self.node, None
        node.RemoveObserver(self.observer)
        if node.GetScene() is not None:
            slicer.mrmlScene.RemoveNode(node)
        interaction = slicer.app.applicationLogic().GetInteractionNode()
        interaction.SetCurrentInteractionMode(slicer.vtkMRMLInteractionNode.ViewTransform)

    def forget(self):
        """The scene closed: its nodes are gone."""
        self.node = self.observer = None
