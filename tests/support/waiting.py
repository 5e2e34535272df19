"""The one way tests wait: poll a condition until it holds, within a bound the product
sets (an engine's start timeout, a health interval), and fail loudly when it does not."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")
POLL_S = 0.05


def wait_until(condition: Callable[[], T], bound_s: float, what: str) -> T:
    """Poll `condition` until it returns something true, and return that; after `bound_s`
    seconds fail the test with `what` was awaited and the condition's last answer."""
    deadline = time.monotonic() + bound_s
    while True:
        answer = condition()
        if answer:
            return answer
        if time.monotonic() >= deadline:
            raise AssertionError(f"gave up after {bound_s:g}s waiting for {what} (last answer: {answer!r})")
        time.sleep(POLL_S)
