"""Moving between neurons in the explorer: Previous / Next within the run's order (stopping at the
ends instead of wrapping round to the last layer). The page asks the store (Store.neuron_step, one row
per step: a run of 100k neurons is not read whole); `step` is the same rule on an order held in memory,
which the tests hold the store's query to. Label-search ranking is Store.search_neurons'."""

from __future__ import annotations


def step(order: list[tuple[str, int]], here: tuple[str, int], delta: int) -> tuple[str, int] | None:
    """The neuron `delta` places from `here` in `order` (layers in run order, units ascending), or None
    past either end: Previous on the first neuron must not jump to the last layer's last unit."""
    if not order:
        return None
    i = order.index(here) if here in order else 0
    j = i + delta
    return order[j] if 0 <= j < len(order) else None
