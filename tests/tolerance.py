"""Tolerances on the values' own scale, for comparing float results computed in another order.

Two float32 computations of the same logits (another BLAS, thread count, torch vs NumPy, a loaded
machine) differ by summation-order noise, which grows with the size of the numbers summed: an
absolute 1e-5 is 6 ulps on logits of size 25 and 0.1 ulp on logits of size 1000. So these
comparisons allow a number of ulps *at the scale of the expected values* (their largest finite
magnitude), in the precision the numbers were computed in: float32 (ulp 2**-23) unless said
otherwise, even for a float64 statistic of float32 logits, whose noise is float32's.

    assert_close(fresh, old, ulps=64)   # |fresh - old| <= 64 * 2**-23 * max|old|, elementwise

A real bug (a wrong sign, a missing scale, a transposed weight) moves logits by O(1), thousands of
ulps at any of these scales, so the tolerance stays far from hiding one.
"""
from __future__ import annotations

import numpy as np

#: fixture remade with the same script and library versions: only the order of float32 sums can
#: differ (torch's thread scheduling, BLAS kernels); a few layers of that stay well under 64 ulps.
REMAKE_ULPS = 64
#: llama_np (NumPy) against an independent implementation (transformers on torch): the same math
#: in other kernels and another order (softmax, RoPE tables in float32 vs float64) through every
#: layer of a model.
REFERENCE_ULPS = 256


def scale_tolerance(want, ulps: float, scale: float | None = None, precision=np.float32) -> float:
    """``ulps`` ulps of ``precision`` at ``want``'s scale: its largest finite |value|, or ``scale``
    when the noise comes from bigger numbers upstream (probabilities or statistics of logits)."""
    if scale is None:
        want = np.asarray(want)
        finite = np.abs(want[np.isfinite(want)]) if want.dtype.kind == "f" else np.abs(want)
        scale = finite.max() if finite.size else 0.0
    return float(ulps * np.finfo(precision).eps * scale)


def assert_close(got, want, ulps: float, err_msg: str = "", scale: float | None = None,
                 precision=np.float32) -> None:
    """``got`` equals ``want`` within ``ulps`` ulps at ``want``'s scale (NaN and inf must match)."""
    tol = scale_tolerance(want, ulps, scale, precision)
    np.testing.assert_allclose(got, want, rtol=0, atol=tol,
                               err_msg=f"{err_msg} (tolerance {ulps} ulps at the values' scale: {tol:.3g})")
