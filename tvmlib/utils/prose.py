"""Sentences whose numbers come from results, never typed by hand.

A notebook states a measured number in a sentence rendered from its results (a dict read from a
``figures/*.json`` file), so the prose cannot drift from the data:

    say("TVM's one jump reaches W2 {w2:.3f}, {ratio:.2f}x FM's best: **{verdict}**.",
        w2=tvm_w2, ratio=tvm_w2 / best_fm, verdict=hit_or_miss(tvm_w2, 1.3 * best_fm))

``render`` formats the template with ``str.format``; ``say`` also shows the text as Markdown in a
notebook (prints it elsewhere). Measured numbers in a notebook's own markdown cells are what
``tests/test_notebooks`` looks for: state them through ``say`` instead.
"""

from __future__ import annotations

import math


def hit_or_miss(value: float, bound: float, *, higher_is_better: bool = False) -> str:
    """``"hit"`` when ``value`` is at or below ``bound`` (at or above with ``higher_is_better``),
    else ``"miss"``. A non-finite value (a diverged run) is a miss."""
    if not math.isfinite(float(value)):
        return "miss"
    ok = value >= bound if higher_is_better else value <= bound
    return "hit" if ok else "miss"


def mean_std(values) -> str:
    """``"0.283 +- 0.004"`` for several seeds (sample std), the value alone for one."""
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("mean_std needs at least one value")
    m = sum(xs) / len(xs)
    if len(xs) == 1:
        return f"{m:.3g}"
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
    return f"{m:.3g} +- {sd:.2g}"


def render(template: str, /, **numbers) -> str:
    """``template.format(**numbers)``; a missing placeholder raises ``KeyError`` naming it."""
    return template.format(**numbers)


def say(template: str, /, **numbers) -> None:
    """Render ``template`` with ``numbers`` and display it as Markdown (printed outside IPython)."""
    text = render(template, **numbers)
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display
        if get_ipython() is not None:
            return display(Markdown(text))
    except ImportError:
        pass
    print(text)
