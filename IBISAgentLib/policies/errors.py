class PolicyError(RuntimeError):
    """A policy could not produce text (endpoint down, replay exhausted, model failure)."""
