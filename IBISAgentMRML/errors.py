class AdapterError(ValueError):
    """A scene state the agent cannot work with; the message says why and what to do, in one line."""
