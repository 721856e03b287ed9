"""Quantisation of unit-norm embedding vectors: int8 with a square-root companding curve, or float16.

``int8-sqrt`` stores ``round(127 * sign(x) * sqrt(|x|))``; -128 means no data. The per-component error against the
unit vector is at most ``QUANT_MAX_ABS_ERROR`` (1/127).
"""

from __future__ import annotations

import numpy as np

QMAX = 127


NODATA_Q = -128


# |u - v| = |s - s'| (s + s') with s = sqrt|u|, s' = |q|/127, |s - s'| <= 1/254 and s, s' <= 1:
QUANT_MAX_ABS_ERROR = 1.0 / QMAX  # 0.007874: per-component bound against the unit vector


def error_bound(quantisation: str) -> float | None:
    """Per-component bound on a stored value's error: ``QUANT_MAX_ABS_ERROR`` against the unit vector
    for ``int8-sqrt``; None for ``float16``, which keeps the raw values (relative float16 rounding)."""
    return QUANT_MAX_ABS_ERROR if quantisation == "int8-sqrt" else None


# ------------------------------------------------------------------------------------------
# Quantisation


def _lut() -> np.ndarray:
    """256-entry decode table indexed by the uint8 view of a quantised int8 value."""
    q = np.arange(256, dtype=np.uint8).view(np.int8).astype(np.float32)
    v = np.sign(q) * (q / QMAX) ** 2
    v[q == NODATA_Q] = np.nan
    return v.astype(np.float32)


DECODE_LUT = _lut()


def quantize(x: np.ndarray) -> np.ndarray:
    """float vectors ``[..., dim]`` -> int8 ``int8-sqrt`` codes (see module docstring).

    A vector with any non-finite component is nodata (all components -128). A zero vector stays 0.
    """
    x = np.asarray(x, dtype=np.float32)
    bad = ~np.isfinite(x).all(axis=-1, keepdims=True)
    xs = np.where(bad, 0.0, x)
    norm = np.linalg.norm(xs, axis=-1, keepdims=True)
    u = xs / np.where(norm > 0, norm, 1.0)
    q = np.clip(np.rint(QMAX * np.sign(u) * np.sqrt(np.abs(u))), -QMAX, QMAX).astype(np.int8)
    return np.where(bad, np.int8(NODATA_Q), q)


def dequantize(q: np.ndarray) -> np.ndarray:
    """int8 codes -> float32 (``v = sign(q) * (q/127)**2``, -128 -> NaN); float16 input -> float32."""
    q = np.asarray(q)
    if q.dtype == np.int8:
        return DECODE_LUT[q.view(np.uint8)]
    return q.astype(np.float32)


def encode(x: np.ndarray, quantisation: str) -> np.ndarray:
    """Store encoding for a version's quantisation (``float16`` keeps raw values, NaN = nodata)."""
    if quantisation == "int8-sqrt":
        return quantize(x)
    x = np.asarray(x, dtype=np.float32)
    bad = ~np.isfinite(x).all(axis=-1, keepdims=True)
    return np.where(bad, np.nan, x).astype(np.float16)


def unit(x: np.ndarray) -> np.ndarray:
    """L2-normalise along the last axis (zero vectors stay zero, NaN stays NaN)."""
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(n > 0, n, 1.0)


def quantisation_error(x: np.ndarray, quantisation: str = "int8-sqrt") -> dict[str, float | int | None]:
    """Round-trip error stats of ``x`` ``[..., dim]`` (valid vectors only; None when there are none).

    For ``int8-sqrt`` the reference is the unit vector (the store keeps directions).
    """
    flat = np.asarray(x, dtype=np.float32).reshape(-1, np.shape(x)[-1])
    valid = np.isfinite(flat).all(axis=1)
    ref = flat[valid]
    out: dict[str, float | int | None] = {"valid_vectors": int(valid.sum())}
    if ref.size == 0:
        return {
            **out,
            "max_abs_error": None,
            "mean_abs_error": None,
            "min_cosine": None,
            "norm_min": None,
            "norm_max": None,
        }
    norms = np.linalg.norm(ref, axis=1)
    if quantisation == "int8-sqrt":
        ref = unit(ref)
    back = dequantize(encode(ref, quantisation))
    err = np.abs(back - ref)
    cos = np.sum(unit(back) * unit(ref), axis=1)
    return {
        **out,
        "max_abs_error": float(err.max()),
        "mean_abs_error": float(err.mean()),
        "min_cosine": float(cos.min()),
        "norm_min": float(norms.min()),
        "norm_max": float(norms.max()),
    }
