"""One exception type for every problem a user can fix, so the CLI and the app can show it plainly."""


class ClipevalError(Exception):
    """A user-facing error: the message names the problem and, where possible, the fix."""


class WeightsUnavailable(ClipevalError):
    """A model's weights are not on this machine (and model hubs are not reachable)."""
