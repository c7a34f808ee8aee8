"""Checkpoints every trainer writes (behaviour policies and offline algorithms alike).

- **Safe to load**: plain tensors and Python values, read with ``torch.load(weights_only=True)``;
  nothing is unpickled, and no message ever suggests ``weights_only=False``.
- **Whole or absent**: written to a temporary file, fsynced and renamed (a crash leaves the old
  checkpoint or the new one, never half of one).
- **Checked**: the state carries ``_sha256``, a digest of its contents (every tensor's dtype,
  shape and bytes, every key and value), so bytes altered on disk are found on load even where the
  zip container still opens.
- **A fallback**: ``save_checkpoint(..., keep_previous=True)`` first moves a good current file to
  ``NAME.previous.pt``; :func:`load_checkpoint` falls back to it, with a warning, when the current
  one is missing or damaged, and otherwise fails with one line.

A checkpoint stays loadable with a plain ``torch.load(path, weights_only=True)``: the digest is one
more string in the dict.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable
from pathlib import Path

from omgmg.datakit.errors import CheckpointError
from omgmg.datakit.outputs import atomic_write_bytes, fsync_dir, os_errors

DIGEST_KEY = "_sha256"


def state_digest(state) -> str:
    """sha256 over a checkpoint's contents in a canonical order (the digest key itself excluded)."""
    import torch

    h = hashlib.sha256()

    def visit(x) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(x, dict):
            h.update(b"{")
            for k in sorted(x, key=str):
                if k == DIGEST_KEY:
                    continue
                h.update(f"{k!r}:".encode())
                visit(x[k])
            h.update(b"}")
        elif isinstance(x, (list, tuple)):
            h.update(b"[" if isinstance(x, list) else b"(")
            for v in x:
                visit(v)
            h.update(b"]")
        else:
            h.update(f"{type(x).__name__}:{x!r};".encode())

    visit(state)
    return h.hexdigest()


def previous_path(path) -> Path:
    path = Path(path)
    return path.with_name(f"{path.stem}.previous{path.suffix}")


def _read(path: Path) -> dict:
    import torch

    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a zip, pickle or EOF error: the file is damaged either way
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(e).__name__}): the file is damaged, "
            "truncated or not an omgmg checkpoint"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} does not hold an omgmg checkpoint")
    if DIGEST_KEY in state and state[DIGEST_KEY] != state_digest(state):
        raise CheckpointError(f"checkpoint {path} does not match its checksum: its bytes were altered after saving")
    return state


def save_checkpoint(state: dict, path, *, keep_previous: bool = False) -> Path:
    """Write ``state`` (plus its digest) atomically to ``path``; see the module docstring."""
    import torch

    path = Path(path)
    state = {**state, DIGEST_KEY: state_digest(state)}
    buf = io.BytesIO()
    torch.save(state, buf)
    if keep_previous and path.exists():
        try:
            _read(path)
        except CheckpointError:
            pass  # never rotate a damaged file over the good previous one
        else:
            with os_errors(path, "keeping the previous checkpoint"):
                os.replace(path, previous_path(path))
                fsync_dir(path.parent)
    atomic_write_bytes(path, buf.getvalue())
    return path


def load_checkpoint(path, *, fallback: bool = True, warn: Callable[[str], None] | None = None) -> dict:
    """Read and verify a checkpoint; with ``fallback``, use ``NAME.previous.pt`` (and ``warn``) when the
    file itself is missing or damaged. Raises :class:`CheckpointError` with one line otherwise."""
    path = Path(path)
    try:
        return _read(path)
    except CheckpointError as first:
        prev = previous_path(path)
        if not (fallback and prev.is_file()):
            raise
        try:
            state = _read(prev)
        except CheckpointError as second:
            raise CheckpointError(f"{first}; the previous one is unusable too ({second})") from None
        if warn:
            warn(f"{first}; continuing from the previous checkpoint {prev.name}")
        return state
