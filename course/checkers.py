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

On failure, ``check_function`` first tries the known wrong answers of the exercise
(``course.mistakes``, looked up by the check's name) on the same inputs: when the learner's result
equals one of them, the message names that mistake and its fix. Otherwise it adds a structural
hint where one is certain (a constant factor, a transposed result, a shift by one position, only
the diagonal wrong). Every failure prints at most ~1,000 characters: shapes and a small window
around the first difference, never whole inputs.

Only NumPy is imported here, so a notebook can use these without the build tooling.
"""
from __future__ import annotations

import copy

import numpy as np

__all__ = ["check_function", "check_close", "check_equal", "check_dtype", "check_peak_memory", "CheckFailed",
           "diagnose", "structural_hint"]

FLOAT64_HINT = ("float64 usually creeps in silently: a NumPy float64 scalar such as np.sqrt(d), "
                "or np.zeros/np.ones/np.arange without dtype=np.float32, promotes float32 arrays; "
                "use Python floats or np.float32")


class CheckFailed(AssertionError):
    """Raised by a check; an AssertionError, so nbval and pytest treat it as a failed check."""


MAX_LINE, MAX_BLOCK = 200, 1000     # characters: one detail line, the whole ✗ block


def _clip(text: str, n: int) -> str:
    text = str(text)
    return text if len(text) <= n else text[:n - 3] + "..."


def _fail(name: str, short: str, detail: list[str] | None = None):
    """Print the ✗ block (verdict line first, at most MAX_BLOCK characters), then raise with the
    one-line message."""
    __tracebackhide__ = True    # IPython and pytest hide this frame from the traceback
    head = _clip(f"✗ {name}: {short}", 2 * MAX_LINE)
    lines, used = [head], len(head)
    for line in detail or []:
        line = "    " + _clip(line, MAX_LINE)
        if used + len(line) + 1 > MAX_BLOCK:
            break
        lines.append(line)
        used += len(line) + 1
    print("\n".join(lines))
    raise CheckFailed(_clip(f"{name}: {short}", 2 * MAX_LINE))


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
    if isinstance(value, (list, tuple)) and (len(value) > 6 or not _is_flat_numbers(value)):
        if len(value) > 6:
            return f"{type(value).__name__} of {len(value)}"
        inner = ", ".join(_describe(v) for v in value)
        return _clip(("[" + inner + "]") if isinstance(value, list) else ("(" + inner + ")"), 120)
    if isinstance(value, dict):
        if len(value) > 6:
            return f"dict of {len(value)} entries"
        return _clip("{" + ", ".join(f"{k!r}: {_describe(v)}" for k, v in value.items()) + "}", 120)
    if isinstance(value, str) and len(value) > 40:
        return f"str of {len(value)} characters"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ----------------------------------------------------------------------------------- comparing
ORDINALS = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth"]


def _part(i: int, n: int, path: str, labels) -> str:
    """Item i of a result of n items, in words: "the second of the 2 values returned"."""
    if not path and labels is not None:
        return labels(i) if callable(labels) else str(labels[i])
    if path:
        return f"{path}, item {i + 1}"
    return f"the {ORDINALS[i] if i < 10 else f'{i + 1}th'} of the {n} values returned"


def _compare(got, expected, atol: float, rtol: float, check_dtype: bool, path: str, labels=None):
    """None if ``got`` matches ``expected``; else (one-line problem, [detail lines]).
    ``path`` names the part being compared in words ("" for the whole result); ``labels`` names
    the items of a top-level list or tuple (a list of names, or a function of the index)."""
    where = f"{path}: " if path else ""
    if isinstance(expected, (tuple, list)) and (isinstance(expected, tuple) and 0 < len(expected) <= 4
                                                or not (_is_flat_numbers(expected) or _is_exact_items(expected))):
        if not isinstance(got, (tuple, list)):
            return f"{where}expected a {type(expected).__name__} of {len(expected)}, got {type(got).__name__}", []
        if len(got) != len(expected):
            return f"{where}expected {len(expected)} values, got {len(got)}", []
        for i, (g, e) in enumerate(zip(got, expected)):
            diff = _compare(g, e, atol, rtol, check_dtype, _part(i, len(expected), path, labels))
            if diff:
                return diff
        return None
    if isinstance(expected, dict):
        if not isinstance(got, dict):
            return f"{where}expected a dict, got {type(got).__name__}", []
        if set(got) != set(expected):
            missing = sorted(map(str, set(expected) - set(got)))
            extra = sorted(map(str, set(got) - set(expected)))
            return _clip(f"{where}keys differ (missing {missing[:5]}, unexpected {extra[:5]})", 300), []
        for k in expected:
            diff = _compare(got[k], expected[k], atol, rtol, check_dtype,
                            f"{path}, entry {k!r}" if path else f"the entry {k!r}")
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
    return _compare_exact(got, expected, where, labels if not path else None)


def _is_flat_numbers(seq) -> bool:
    return all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in seq) and len(seq) > 0


def _is_exact_items(seq) -> bool:
    """A list of ints, strings or bytes (token ids, pieces): compared item by item, exactly."""
    return len(seq) > 0 and all(isinstance(v, (int, str, bytes, np.integer)) and not isinstance(v, bool)
                                for v in seq)


def _compare_exact(got, expected, where: str, labels=None):
    if isinstance(expected, (list, tuple)) or isinstance(got, np.ndarray):
        g = got.tolist() if isinstance(got, np.ndarray) else got
        if not isinstance(g, (list, tuple)):
            return f"{where}expected a list of {len(expected)}, got {type(got).__name__}", []
        g, e = list(g), list(expected)
        item = (lambda i: labels(i) if callable(labels) else str(labels[i])) if labels else (lambda i: f"item {i}")
        for i, (a, b) in enumerate(zip(g, e)):
            if a != b:
                return (f"{where}{item(i)} differs: expected {_short_repr(b)}, got {_short_repr(a)} "
                        f"(items counted from 0)" if not labels else
                        f"{where}{item(i)} differs: expected {_short_repr(b)}, got {_short_repr(a)}",
                        [f"expected {_window(e, i)}", f"got      {_window(g, i)}"])
        if len(g) != len(e):
            n = min(len(g), len(e))
            return (f"{where}expected {len(e)} items, got {len(g)} (the first {n} match)",
                    [f"expected {_window(e, n)}", f"got      {_window(g, n)}"])
        return None
    if isinstance(expected, str):
        if not isinstance(got, str):
            return f"{where}expected a str, got {type(got).__name__}", []
        if got != expected:
            i = next((k for k, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
            lo = max(0, i - 20)
            return (f"{where}differs at character {i} of {len(expected)}: expected {expected[i:i + 20]!r}, "
                    f"got {got[i:i + 20]!r}",
                    [f"expected {'...' if lo else ''}{expected[lo:i + 20]!r}{'...' if i + 20 < len(expected) else ''}",
                     f"got      {'...' if lo else ''}{got[lo:i + 20]!r}{'...' if i + 20 < len(got) else ''}"])
        return None
    if got != expected or type(got) is bool and type(expected) is not bool:
        return f"{where}expected {_short_repr(expected)}, got {_short_repr(got)}", []
    return None


def _short_repr(v, n: int = 40) -> str:
    return _clip(repr(v), n)


def _window(seq, i: int, k: int = 4) -> str:
    lo = max(0, i - k)
    head = "[..., " if lo else "["
    tail = ", ...]" if i + k + 1 < len(seq) else "]"
    return head + ", ".join(_short_repr(v, 24) for v in seq[lo:i + k + 1]) + tail


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
        return f"{where}wrong shape: expected {tuple(exp.shape)}, got {tuple(g.shape)}", [_shape_hint(g, exp)]
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
        hint = structural_hint(gf, ef, bad, atol, rtol)
        detail = ([hint] if hint else []) + [
            f"first at index {_idx(first)}: expected {_num(ef[first])}, got {_num(gf[first])}",
            f"  expected {_array_window(ef, first)}", f"  got      {_array_window(gf, first)}",
            f"largest at index {_idx(worst)}: expected {_num(ef[worst])}, got {_num(gf[worst])}",
            f"tolerance: {_tol(atol, rtol)} (|got - expected| <= atol + rtol * |expected|)"]
        return short, detail
    return None


def _array_window(a, index, k: int = 2) -> str:
    """The values around ``index`` along the last axis: [..., a, b, c, ...]."""
    if a.ndim == 0:
        return _num(a)
    row, j = a[tuple(index[:-1])], int(index[-1])
    lo, hi = max(0, j - k), min(row.shape[0], j + k + 1)
    return (("[..., " if lo else "[") + ", ".join(_num(v) for v in row[lo:hi])
            + (", ...]" if hi < row.shape[0] else "]"))


def _shape_hint(g, exp) -> str:
    """What a wrong shape most likely means, in words."""
    gs, es = tuple(g.shape), tuple(exp.shape)
    if g.ndim >= 2 and gs == es[:-2] + es[-2:][::-1]:
        return "the last two axes are swapped: a transposed result (.T or swapaxes(-1, -2) in the wrong place?)"
    if g.ndim == exp.ndim + 1 and 1 in gs:
        return "one axis too many, of length 1: keepdims=True where it should not be, or a missing squeeze"
    if g.ndim + 1 == exp.ndim and 1 in es:
        return "one axis too few: a reduction without keepdims=True, or an index that dropped an axis"
    if g.ndim == exp.ndim:
        axes = [i for i, (a, b) in enumerate(zip(gs, es)) if a != b]
        if len(axes) == 1:
            i = axes[0]
            return (f"only axis {i} differs ({gs[i]} instead of {es[i]}): check the slice, repeat or "
                    f"reshape that makes that axis")
    return "check which axis you reduce over (axis=-1?) and keepdims, and the order of reshape/transpose"


def structural_hint(g, e, bad, atol: float, rtol: float) -> str | None:
    """A hint about float arrays ``g`` (got) and ``e`` (expected) of the same shape, given only
    when it is certain: the arrays agree after the named change, within the check's tolerance."""
    if np.isnan(g).any() or np.isnan(e).any() or e.size < 2:
        return None
    close = lambda a, b: np.allclose(a, b, rtol=rtol, atol=atol)
    finite = np.isfinite(g).all() and np.isfinite(e).all()
    ee = float((e * e).sum()) if finite else 0.0
    if ee > 0:
        c = float((g * e).sum()) / ee
        if abs(c - 1) > 1e-3 and abs(c) > 1e-6 and close(g, c * e):
            for n in range(2, 4097):
                if abs(c * c * n - 1) < 1e-4 * n or abs(c * c - n) < 1e-4 * n:
                    root = f"1/sqrt({n})" if c * c < 1 else f"sqrt({n})"
                    return (f"every value is {c:.6g} times the expected one ({root}): a scale applied "
                            f"twice, or missing (the 1/sqrt(d) of attention?)")
            return f"every value is {c:.6g} times the expected one: a constant factor is off"
    if g.ndim >= 2 and g.shape[-1] == g.shape[-2] and close(g.swapaxes(-1, -2), e):
        return "your result is the expected one transposed (the last two axes swapped)"
    if g.ndim >= 2 and g.shape[-1] == g.shape[-2]:
        off = bad.copy()
        off[..., np.arange(g.shape[-1]), np.arange(g.shape[-1])] = False
        if not off.any():
            return "only the diagonal is wrong (where a query meets its own position: off by one?)"
    for axis in range(g.ndim):
        n = g.shape[axis]
        if n < 3:
            continue
        a = np.take(g, np.arange(1, n), axis=axis)
        b = np.take(e, np.arange(0, n - 1), axis=axis)
        if close(a, b):
            return f"your values are the expected ones shifted by one position along axis {axis} (one too late)"
        if close(np.take(g, np.arange(0, n - 1), axis=axis), np.take(e, np.arange(1, n), axis=axis)):
            return f"your values are the expected ones shifted by one position along axis {axis} (one too early)"
    return None


# -------------------------------------------------------------------------------------- checks
def check_function(learner_fn, reference_fn, make_inputs, name: str | None = None,
                   ref_name: str | None = None, rtol: float = 1e-5, atol: float = 1e-5,
                   n_trials: int = 3, seed: int = 0, check_dtype: bool = True,
                   check_inputs_unchanged: bool = True, mistakes=None, labels=None) -> None:
    """Call ``learner_fn`` and ``reference_fn`` on the same random inputs and compare.

    make_inputs(rng) -> a tuple of positional arguments, a dict of keyword arguments, or a single
    argument; ``rng`` is ``np.random.default_rng(seed + trial)``, so inputs are the same on every
    run. Results may be arrays, numbers, lists or tuples of them; arrays must match in shape,
    floating dtype (float32 stays float32) and values within ``atol + rtol * |expected|``.
    ``check_inputs_unchanged``: fail if the learner's function changes its input arrays in place.
    ``mistakes``: the known wrong answers to try on failure, a list of ``course.mistakes.Mistake``
    or the name of an exercise; by default the exercise whose name starts ``name``.
    ``labels``: names for the items of a list or tuple result, in words (a list, or a function of
    the index), e.g. ``labels=lambda i: f"the token generated at step {i + 1}"``.
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
        diff = _compare(got, expected, atol, rtol, check_dtype, "", labels)
        if diff:
            short, detail = diff
            known = diagnose(mistakes if mistakes is not None else name, got, expected, args, kwargs, atol, rtol,
                             later=[(make_inputs, seed + t, learner_fn) for t in range(trial + 1, n_trials)])
            if known:
                _fail(name, known.message, [f"(your result equals this wrong answer {context})",
                                            "the first difference: " + short] + detail[:3])
            _fail(name, short, [context] + detail)
        if check_inputs_unchanged:
            for label, before, after in _arrays(args, kwargs, mine_args, mine_kwargs):
                if not np.array_equal(before, after, equal_nan=True):
                    _fail(name, f"changed its input {label} in place",
                          [context, "work on a copy (x = x.copy()) or build a new array instead"])
    print(f"✓ {name} matches {ref_name} on {n_trials} random input{'s' if n_trials != 1 else ''} "
          f"({'exactly' if exact or not (atol or rtol) else f'within {_tol(atol, rtol)}'})")


def diagnose(mistakes, got, expected, args, kwargs, atol: float = 0.0, rtol: float = 0.0, later=()):
    """The known mistake (a ``course.mistakes.Mistake``) whose wrong answer, on these inputs, gives
    exactly what the learner got (within the check's tolerance) and differs from ``expected``;
    None if there is none. ``mistakes`` is a list of them or an exercise's name. When several
    match, ``later`` (make_inputs, seed, learner_fn) triples try more inputs to tell them apart."""
    if isinstance(mistakes, str):
        try:
            from course.mistakes import lookup
        except ImportError:           # checkers.py copied alone: no diagnoses, the plain message
            return None
        mistakes = lookup(mistakes)
    found = [m for m in mistakes or [] if _same(m.fn, got, args, kwargs, atol, rtol, expected)]
    for make_inputs, seed, learner_fn in later:
        if len(found) < 2:
            break
        a, k = _split(make_inputs(np.random.default_rng(seed)))
        try:
            with np.errstate(all="ignore"):
                mine = learner_fn(*copy.deepcopy(a), **copy.deepcopy(k))
        except Exception:
            break
        found = [m for m in found if _same(m.fn, mine, a, k, atol, rtol)] or found
    return found[0] if found else None


def _same(fn, got, args, kwargs, atol, rtol, expected=None) -> bool:
    """Does the wrong answer ``fn`` give ``got`` on these inputs (and, if given, not ``expected``)?"""
    try:
        with np.errstate(all="ignore"):
            wrong = fn(*copy.deepcopy(args), **copy.deepcopy(kwargs))
    except Exception:                 # this wrong answer fails on these inputs: not the one
        return False
    return (_compare(got, wrong, atol, rtol, False, "") is None
            and (expected is None or _compare(wrong, expected, atol, rtol, False, "") is not None))


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


def check_peak_memory(fn, limit_bytes: int, name: str, what: str, hint: str = ""):
    """Call ``fn()`` and fail if, while it ran, the memory it had allocated at once went above
    ``limit_bytes``: the peak of ``tracemalloc``, which counts every NumPy array (NumPy reports its
    buffers to it) and Python object, not memory the process merely has mapped. So it measures the
    code, not the machine: the same answer gives the same peak everywhere, give or take the small
    objects. Returns ``fn()``'s result. ``what`` says in words what is bounded."""
    __tracebackhide__ = True
    import tracemalloc
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    try:
        result = fn()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        if not tracing:
            tracemalloc.stop()
    if peak > limit_bytes:
        _fail(name, f"{what}: it held {peak / 2**20:.1f} MiB at once, more than the {limit_bytes / 2**20:.0f} MiB allowed",
              [hint] if hint else [])
    print(f"✓ {name}: {what} (at most {limit_bytes / 2**20:.0f} MiB at once)")
    return result
