"""IBISAgent core: agentic, text-instructed medical image segmentation.

Importing this package is light on purpose (3D Slicer imports it at start-up): torch, transformers and
sam2 are imported inside the classes that use them.
"""

__version__ = "0.1.0"
