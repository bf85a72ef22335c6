"""Model hubs are unreachable here: load only from local caches, and fail at once instead of retrying."""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from pathlib import Path

# Imported inside the functions that use them: huggingface_hub and torch, only to fingerprint a model or
# point the hub at local files.


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


def module_fingerprint(module) -> str:
    """sha256 of a module's parameters and buffers (names, shapes, dtypes, values): the identity of weights
    that have no file, e.g. a random initialisation, so that two of them never share a cache entry."""

    import torch

    h = hashlib.sha256()
    with torch.no_grad():
        for name, t in module.state_dict().items():
            t = t.detach().cpu().contiguous()
            h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-dim too
    return "sha256:" + h.hexdigest()[:24]


def folder_fingerprint(folder) -> str:
    """Identity of every file under a model folder: relative path, size, modification time, and the
    target of symlinks (the Hugging Face cache names its blobs by content hash)."""

    root = Path(folder)
    h = hashlib.sha256()
    for p in sorted(x for x in root.rglob("*") if x.is_file()):
        real = p.resolve()
        st = real.stat()
        h.update(f"{p.relative_to(root)}:{real.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return "files:" + h.hexdigest()[:24]
