"""Checks that lesson check cells call. Each prints one ✓ line when the learner's answer is right,
or the FIRST difference when it is not (wrong shape, wrong dtype, NaN, a value out of tolerance,
and where), then raises ``AssertionError`` with a one-line message so that ``pytest --nbval``
and ``python -m course check`` see the failure.

The rule that keeps nbval stable: a ✓ line says only what EVERY correct answer reproduces
exactly (names, counts, shapes, the tolerance), never a measured error, because nbval compares
the printed text with the stored output of the solution. Measured numbers appear only on
failure, where the cell fails anyway.

    from course.checkers import check_function, check_close, check_equal, check_dtype
    check_function(rms_norm, llama_np.norm.rms_norm,
                   lambda rng: (rng.standard_normal((4, 16), dtype=np.float32),
                                rng.standard_normal(16, dtype=np.float32)),
                   atol=1e-5)   # float32 rounding of a 16-term mean: ~1e-7; 1e-5 leaves room
    ✓ rms_norm matches llama_np.norm.rms_norm on 3 random inputs (within atol 1e-05, rtol 1e-05)

Only NumPy is imported here, so a notebook can use these without the build tooling.
"""
from __future__ import annotations

import copy

import numpy as np

__all__ = ["check_function", "check_close", "check_equal", "check_dtype", "CheckFailed"]

FLOAT64_HINT = ("float64 usually creeps in silently: a NumPy float64 scalar such as np.sqrt(d), "
                "or np.zeros/np.ones/np.arange without dtype=np.float32, promotes float32 arrays; "
                "use Python floats or np.float32")


class CheckFailed(AssertionError):
    """Raised by a check; an AssertionError, so nbval and pytest treat it as a failed check."""


def _fail(name: str, short: str, detail: list[str] | None = None):
    """Print the ✗ block, then raise with the one-line message."""
    __tracebackhide__ = True    # IPython and pytest hide this frame from the traceback
    print(f"✗ {name}: {short}")
    for line in detail or []:
        print(f"    {line}")
    raise CheckFailed(f"{name}: {short}")


# ----------------------------------------------------------------------------------- formatting
def _tol(atol: float, rtol: float) -> str:
    parts = [f"atol {atol:.0e}"] if atol else []
    if rtol:
        parts.append(f"rtol {rtol:.0e}")
    return ", ".join(parts) if parts else "exactly"


def _idx(index) -> str:
    index = tuple(int(i) for i in index)
    return "(" + ", ".join(map(str, index)) + ("," if len(index) == 1 else "") + ")"


def _num(x) -> str:
    return f"{float(x):.6g}" if np.isfinite(x) else str(float(x))


def _describe(value) -> str:
    """A short, stable description of an input: shapes and dtypes, not contents."""
    if isinstance(value, np.ndarray):
        return f"array{tuple(value.shape)} {value.dtype}"
    if isinstance(value, (list, tuple)) and len(value) > 6:
        return f"{type(value).__name__} of {len(value)}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_describe(v)}" for k, v in value.items()) + "}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ----------------------------------------------------------------------------------- comparing
def _compare(got, expected, atol: float, rtol: float, check_dtype: bool, path: str):
    """None if ``got`` matches ``expected``; else (one-line problem, [detail lines])."""
    where = f"{path}: " if path else ""
    if isinstance(expected, (tuple, list)) and not _is_flat_numbers(expected):
        if not isinstance(got, (tuple, list)):
            return f"{where}expected a {type(expected).__name__} of {len(expected)}, got {type(got).__name__}", []
        if len(got) != len(expected):
            return f"{where}expected {len(expected)} results, got {len(got)}", []
        for i, (g, e) in enumerate(zip(got, expected)):
            diff = _compare(g, e, atol, rtol, check_dtype, f"{path}[{i}]" if path else f"result[{i}]")
            if diff:
                return diff
        return None
    if isinstance(expected, dict):
        if not isinstance(got, dict):
            return f"{where}expected a dict, got {type(got).__name__}", []
        if set(got) != set(expected):
            missing, extra = sorted(map(str, set(expected) - set(got))), sorted(map(str, set(got) - set(expected)))
            return f"{where}keys differ (missing {missing}, unexpected {extra})", []
        for k in expected:
            diff = _compare(got[k], expected[k], atol, rtol, check_dtype, f"{path}[{k!r}]")
            if diff:
                return diff
        return None
    if isinstance(expected, (np.ndarray, np.generic)) or (isinstance(expected, (list, tuple)) and expected
                                                           and isinstance(expected[0], float)):
        return _compare_arrays(got, expected, atol, rtol, check_dtype, where)
    if isinstance(expected, float):
        if not isinstance(got, (int, float, np.number)) or isinstance(got, bool):
            return f"{where}expected a number, got {type(got).__name__}", []
        if not np.isclose(float(got), expected, rtol=rtol, atol=atol, equal_nan=True):
            return (f"{where}expected {_num(expected)}, got {_num(got)} (tolerance {_tol(atol, rtol)})", [])
        return None
    return _compare_exact(got, expected, where)


def _is_flat_numbers(seq) -> bool:
    return all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in seq) and len(seq) > 0


def _compare_exact(got, expected, where: str):
    if isinstance(expected, (list, tuple)) or isinstance(got, np.ndarray):
        g = got.tolist() if isinstance(got, np.ndarray) else got
        if not isinstance(g, (list, tuple)):
            return f"{where}expected a list of {len(expected)}, got {type(got).__name__}", []
        g, e = list(g), list(expected)
        for i, (a, b) in enumerate(zip(g, e)):
            if a != b:
                return (f"{where}differs at position {i}: expected {b!r}, got {a!r}",
                        [f"expected {_window(e, i)}", f"got      {_window(g, i)}"])
        if len(g) != len(e):
            return (f"{where}expected {len(e)} items, got {len(g)} (the first {min(len(g), len(e))} match)",
                    [f"expected {_window(e, min(len(g), len(e)))}", f"got      {_window(g, min(len(g), len(e)))}"])
        return None
    if isinstance(expected, str):
        if not isinstance(got, str):
            return f"{where}expected a str, got {type(got).__name__}", []
        if got != expected:
            i = next((k for k, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
            return (f"{where}differs at character {i}: expected {expected[i:i + 20]!r}, got {got[i:i + 20]!r}",
                    [f"expected {expected!r}"[:200], f"got      {got!r}"[:200]])
        return None
    if got != expected or type(got) is bool and type(expected) is not bool:
        return f"{where}expected {expected!r}, got {got!r}", []
    return None


def _window(seq, i: int, k: int = 4) -> str:
    lo = max(0, i - k)
    head = "[..., " if lo else "["
    tail = ", ...]" if i + k + 1 < len(seq) else "]"
    return head + ", ".join(repr(v) for v in seq[lo:i + k + 1]) + tail


def _compare_arrays(got, expected, atol, rtol, check_dtype, where):
    exp = np.asarray(expected)
    if isinstance(expected, (np.ndarray, np.generic)) and not isinstance(got, (np.ndarray, np.generic)):
        if isinstance(got, (int, float)) and exp.ndim == 0:
            got = np.asarray(got)
        else:
            return (f"{where}expected a NumPy array, got {type(got).__name__}",
                    ["return an np.ndarray (np.asarray(...) converts lists)"])
    g = np.asarray(got)
    if g.shape != exp.shape:
        return (f"{where}wrong shape: expected {tuple(exp.shape)}, got {tuple(g.shape)}",
                ["check which axis you reduce over (axis=-1?) and keepdims, and the order of reshape/transpose"])
    if check_dtype and isinstance(expected, (np.ndarray, np.generic)):
        if exp.dtype.kind == "f" and g.dtype != exp.dtype:
            hint = [FLOAT64_HINT] if g.dtype == np.float64 and exp.dtype == np.float32 else []
            return f"{where}wrong dtype: expected {exp.dtype}, got {g.dtype}", hint
        if exp.dtype.kind in "iu" and g.dtype.kind not in "iu":
            return f"{where}wrong dtype: expected integers ({exp.dtype}), got {g.dtype}", []
        if exp.dtype.kind == "b" and g.dtype.kind != "b":
            return f"{where}wrong dtype: expected bool, got {g.dtype}", []
    if exp.dtype.kind not in "fciub" or g.dtype.kind not in "fciub":
        if not np.array_equal(g, exp):
            return f"{where}values differ", []
        return None
    gf, ef = g.astype(np.float64), exp.astype(np.float64)
    bad_nan = np.isnan(gf) & ~np.isnan(ef)
    if bad_nan.any():
        first = np.argwhere(bad_nan)[0]
        return (f"{where}got NaN at index {_idx(first)} (expected {_num(ef[tuple(first)])}); "
                f"{int(bad_nan.sum())} NaN value(s) in all",
                ["NaN comes from 0/0, sqrt of a negative, inf - inf, or exp overflow "
                 "(subtract the max before exp in a softmax)"])
    bad = ~np.isclose(gf, ef, rtol=rtol, atol=atol, equal_nan=True)
    if bad.any():
        first = tuple(np.argwhere(bad)[0])
        err = np.where(np.isnan(gf) & np.isnan(ef), 0.0, np.abs(gf - ef))
        err = np.where(np.isfinite(err), err, np.inf)
        worst = np.unravel_index(int(np.argmax(err)), err.shape) if err.size else ()
        short = (f"{where}values differ at {int(bad.sum())} of {bad.size} positions; "
                 f"max abs error {float(err[worst]):.2e} at index {_idx(worst)}")
        detail = [f"first at index {_idx(first)}: expected {_num(ef[first])}, got {_num(gf[first])}",
                  f"largest at index {_idx(worst)}: expected {_num(ef[worst])}, got {_num(gf[worst])}",
                  f"tolerance: {_tol(atol, rtol)} (|got - expected| <= atol + rtol * |expected|)"]
        return short, detail
    return None


# -------------------------------------------------------------------------------------- checks
def check_function(learner_fn, reference_fn, make_inputs, name: str | None = None,
                   ref_name: str | None = None, rtol: float = 1e-5, atol: float = 1e-5,
                   n_trials: int = 3, seed: int = 0, check_dtype: bool = True,
                   check_inputs_unchanged: bool = True) -> None:
    """Call ``learner_fn`` and ``reference_fn`` on the same random inputs and compare.

    make_inputs(rng) -> a tuple of positional arguments, a dict of keyword arguments, or a single
    argument; ``rng`` is ``np.random.default_rng(seed + trial)``, so inputs are the same on every
    run. Results may be arrays, numbers, lists or tuples of them; arrays must match in shape,
    floating dtype (float32 stays float32) and values within ``atol + rtol * |expected|``.
    ``check_inputs_unchanged``: fail if the learner's function changes its input arrays in place.
    """
    __tracebackhide__ = True
    name = name or getattr(learner_fn, "__name__", "your function")
    if ref_name is None:
        mod = getattr(reference_fn, "__module__", None)
        qual = getattr(reference_fn, "__qualname__", getattr(reference_fn, "__name__", "the reference"))
        ref_name = qual if mod in (None, "__main__", "builtins") else f"{mod}.{qual}"
    exact = True
    for trial in range(n_trials):
        inputs = make_inputs(np.random.default_rng(seed + trial))
        args, kwargs = _split(inputs)
        shown = ", ".join([_describe(a) for a in args] + [f"{k}={_describe(v)}" for k, v in kwargs.items()])
        context = f"on random input {trial + 1} of {n_trials} ({shown})"
        expected = reference_fn(*copy.deepcopy(args), **copy.deepcopy(kwargs))
        mine_args, mine_kwargs = copy.deepcopy(args), copy.deepcopy(kwargs)
        try:
            got = learner_fn(*mine_args, **mine_kwargs)
        except NotImplementedError:
            raise
        except Exception as e:
            print(f"✗ {name} raised {type(e).__name__} {context}")
            raise
        if got is None and expected is not None:
            _fail(name, "returned None (is a `return` missing?)", [context])
        exact = exact and _is_exact(expected)
        diff = _compare(got, expected, atol, rtol, check_dtype, "")
        if diff:
            short, detail = diff
            _fail(name, short, [context] + detail)
        if check_inputs_unchanged:
            for label, before, after in _arrays(args, kwargs, mine_args, mine_kwargs):
                if not np.array_equal(before, after, equal_nan=True):
                    _fail(name, f"changed its input {label} in place",
                          [context, "work on a copy (x = x.copy()) or build a new array instead"])
    print(f"✓ {name} matches {ref_name} on {n_trials} random input{'s' if n_trials != 1 else ''} "
          f"({'exactly' if exact or not (atol or rtol) else f'within {_tol(atol, rtol)}'})")


def _is_exact(value) -> bool:
    """Results compared for equality, not within a tolerance: ints, strings, token lists."""
    if isinstance(value, (list, tuple)):
        return all(_is_exact(v) for v in value)
    if isinstance(value, dict):
        return all(_is_exact(v) for v in value.values())
    if isinstance(value, (np.ndarray, np.generic)):
        return np.asarray(value).dtype.kind in "iub"
    return isinstance(value, (int, str, bytes, type(None)))


def _split(inputs):
    if isinstance(inputs, tuple):
        return list(inputs), {}
    if isinstance(inputs, dict):
        return [], dict(inputs)
    return [inputs], {}


def _arrays(args, kwargs, new_args, new_kwargs):
    for i, (a, b) in enumerate(zip(args, new_args)):
        if isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.shape == b.shape:
            yield f"argument {i + 1}", a, b
    for k in kwargs:
        a, b = kwargs[k], new_kwargs.get(k)
        if isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.shape == b.shape:
            yield k, a, b


def check_close(got, expected, name: str, atol: float = 1e-5, rtol: float = 0.0,
                check_dtype: bool = False) -> None:
    """Compare an array (or number) with reference numbers, e.g. transformers' from a fixture.
    Say in the check cell why ``atol`` is what it is. ``check_dtype`` is off by default because
    fixtures are often stored in another precision than the computation."""
    __tracebackhide__ = True
    if isinstance(expected, (int, float)) and not isinstance(expected, bool):
        expected = np.asarray(expected, dtype=np.float64)
    diff = _compare_arrays(got, np.asarray(expected), atol, rtol, check_dtype, "")
    if diff:
        _fail(name, diff[0], diff[1])
    n = np.asarray(expected).size
    how = "exactly" if not (atol or rtol) else f"within {_tol(atol, rtol)}"
    print(f"✓ {name} matches the reference ({n} value{'s' if n != 1 else ''} {how})")


def check_equal(got, expected, name: str) -> None:
    """Exact equality, for token ids, texts, counts and shapes; shows the first difference."""
    __tracebackhide__ = True
    if isinstance(expected, np.ndarray):
        expected = expected.tolist()
    if isinstance(expected, tuple) and all(isinstance(v, int) for v in expected) and isinstance(got, tuple):
        got, expected = list(got), list(expected)     # shapes
    diff = _compare_exact(got, expected, "")
    if diff:
        _fail(name, diff[0], diff[1])
    if isinstance(expected, (list, tuple)):
        print(f"✓ {name} matches ({len(expected)} item{'s' if len(expected) != 1 else ''})")
    elif isinstance(expected, str) and (len(expected) > 60 or "\n" in expected):
        print(f"✓ {name} matches ({len(expected)} characters)")
    else:
        print(f"✓ {name} = {expected!r}")


def check_dtype(array, dtype, name: str) -> None:
    """E.g. check_dtype(logits, np.float32, "logits"): catches the silent float64 promotion."""
    __tracebackhide__ = True
    dtype = np.dtype(dtype)
    got = getattr(array, "dtype", None)
    if got is None:
        _fail(name, f"expected a NumPy array of {dtype}, got {type(array).__name__}")
    if got != dtype:
        hint = [FLOAT64_HINT] if got == np.float64 and dtype == np.float32 else []
        _fail(name, f"wrong dtype: expected {dtype}, got {got}", hint)
    print(f"✓ {name} is {dtype}")
