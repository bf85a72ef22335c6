"""Model hubs are unreachable here: load only from local caches, and fail at once instead of retrying."""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def offline_hub():
    """huggingface_hub reads HF_HUB_OFFLINE at import time, so setting the environment variable later
    does nothing; flip its constant for the duration of a load instead (cached files still resolve)."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before
