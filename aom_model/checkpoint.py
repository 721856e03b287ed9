"""safetensors checkpoints carrying the config, normalisation statistics and metadata."""

from __future__ import annotations

import json
import os
import struct
from typing import IO, Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from aom_model.config import AOMConfig
from aom_model.model import AOM
from pipelines.errors import InputError

FORMAT = "aom-checkpoint"
FORMAT_VERSION = 3
"""3: rotary ground positions (no absolute position embedding), a decoder spatial block and whole-band
+ whole-position masking; 2: patch-statistics head and spectral distance bias; 1: neither."""

_WHY_OLD = {
    1: "written before the statistics head and the spectral distance bias",
    2: "written before rotary ground positions replaced the chip-corner position embedding",
}


class CheckpointFormatError(InputError):
    """A file that is not an AOM checkpoint of the format this code reads (exit 2, one line)."""


PathOrFile = str | os.PathLike[str] | IO[bytes]


def checkpoint_bytes(
    model: AOM,
    config: AOMConfig | None = None,
    norm_stats: dict[str, Any] | None = None,
    extra_meta: dict[str, Any] | None = None,
) -> bytes:
    """Serialise to safetensors bytes (tensors + JSON metadata: format, version, config, stats)."""
    config = config or model.config
    if config != model.config:
        raise ValueError("config does not match the model's config")
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    try:
        meta = {
            "format": FORMAT,
            "format_version": str(FORMAT_VERSION),
            "config": json.dumps(config.to_dict(), sort_keys=True),
            "norm_stats": json.dumps(norm_stats),
            "extra": json.dumps(extra_meta or {}),
        }
    except TypeError as e:
        raise ValueError(f"norm_stats / extra_meta must be JSON-serialisable: {e}") from e
    return canonical_safetensors(st_save(tensors, metadata=meta))


def canonical_safetensors(data: bytes) -> bytes:
    """``data`` with its JSON header in one order (keys sorted, compact, space-padded to 8 bytes).

    safetensors writes the header from a Rust ``HashMap``, whose order changes with every save: the
    same model gave different bytes, so a different sha256 (which names embeddings versions) each
    time. Tensor data and offsets are untouched; readers parse the header as JSON."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.dumps(json.loads(data[8 : 8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + data[8 + n :]


def save_checkpoint(
    dest: PathOrFile | None,
    model: AOM,
    config: AOMConfig | None = None,
    norm_stats: dict[str, Any] | None = None,
    extra_meta: dict[str, Any] | None = None,
) -> bytes:
    """Write a checkpoint to a local path or a binary file object (or nowhere: ``dest=None``);
    returns the bytes either way."""
    data = checkpoint_bytes(model, config, norm_stats, extra_meta)
    if dest is None:
        return data
    if isinstance(dest, str | os.PathLike):
        with open(dest, "wb") as f:
            f.write(data)
    else:
        dest.write(data)
    return data


def read_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors blob."""
    if len(data) < 8:
        raise CheckpointFormatError("not a safetensors checkpoint: too short")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise CheckpointFormatError("not a safetensors checkpoint: bad header length")
    header = json.loads(data[8 : 8 + n])
    meta: dict[str, str] = header.get("__metadata__", {}) or {}
    return meta


def _check_format(meta: dict[str, str]) -> int:
    """-> the format version of an AOM checkpoint this code reads (else CheckpointFormatError)."""
    if meta.get("format") != FORMAT:
        raise CheckpointFormatError(f"not an AOM checkpoint (format={meta.get('format')!r})")
    try:
        version = int(meta.get("format_version", "-1"))
    except ValueError:
        version = -1
    if version != FORMAT_VERSION:
        why = _WHY_OLD.get(version, "unknown version")
        raise CheckpointFormatError(
            f"unsupported checkpoint format_version {version} (this code reads {FORMAT_VERSION}): {why};"
            " use a checkpoint written by this version (aom pretrain) or the shipped one"
        )
    return version


def check_checkpoint_header(url: str, storage_options: dict[str, Any] | None = None, what: str = "") -> None:
    """Read only the safetensors header of the checkpoint at ``url`` (a path or fsspec URL) and check
    that it is an AOM checkpoint of this format: a cheap check before any work, where the weights are
    loaded later. Errors are one-line :class:`CheckpointFormatError` starting with ``what`` (the
    option) and the URL."""
    from pipelines.storage import filesystem, normalise_url, redact_url

    where = f"{what} {redact_url(url)}".strip()
    fs, path = filesystem(normalise_url(url), storage_options)
    try:
        with fs.open(path, "rb") as fh:
            head = fh.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            size = fs.size(path)
            header = fh.read(n) if 0 <= n <= size - 8 else b""
    except (FileNotFoundError, IsADirectoryError) as exc:
        raise CheckpointFormatError(f"{where}: {exc.strerror or exc}") from None
    try:
        meta = read_metadata(head + header) if header else read_metadata(head)
    except CheckpointFormatError as exc:
        raise CheckpointFormatError(f"{where}: {exc}") from None
    except (ValueError, AttributeError):  # the header is not a JSON object
        raise CheckpointFormatError(f"{where}: not a safetensors checkpoint: unreadable header") from None
    try:
        _check_format(meta)
    except CheckpointFormatError as exc:
        raise CheckpointFormatError(f"{where}: {exc}") from None


def load_checkpoint(
    src: PathOrFile | bytes,
    map_location: str | torch.device = "cpu",
) -> tuple[AOM, AOMConfig, dict[str, Any] | None, dict[str, Any]]:
    """-> (model in eval mode, config, norm_stats, meta). Keys and shapes must match exactly."""
    if isinstance(src, bytes | bytearray | memoryview):
        data = bytes(src)
    elif isinstance(src, str | os.PathLike):
        with open(src, "rb") as f:
            data = f.read()
    else:
        data = src.read()
    meta = read_metadata(data)
    version = _check_format(meta)
    stored = json.loads(meta["config"])
    # checkpoints written before the field existed were pretrained with visible band tokens only
    stored.setdefault("encode_masked_bands", False)
    config = AOMConfig.from_dict(stored)
    norm_stats = json.loads(meta.get("norm_stats", "null"))
    extra = json.loads(meta.get("extra", "{}"))
    tensors = st_load(data)
    model = AOM(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointFormatError(
            f"checkpoint keys do not match the model: missing={missing}, unexpected={unexpected}"
        )
    bad_shapes = {
        k: (tuple(tensors[k].shape), tuple(v.shape))
        for k, v in expected.items()
        if tensors[k].shape != v.shape
    }
    if bad_shapes:
        raise CheckpointFormatError(
            f"checkpoint shapes do not match the model (checkpoint, model): {bad_shapes}"
        )
    model.load_state_dict(tensors, strict=True)
    model.to(map_location).eval()
    return model, config, norm_stats, {"format_version": version, "extra": extra}
