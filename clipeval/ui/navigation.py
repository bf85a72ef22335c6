"""Moving between neurons in the explorer: Previous / Next within the run's order (stopping at the
ends instead of wrapping round to the last layer). Label-search ranking is Store.search_neurons'."""

from __future__ import annotations


def step(order: list[tuple[str, int]], here: tuple[str, int], delta: int) -> tuple[str, int] | None:
    """The neuron `delta` places from `here` in `order` (layers in run order, units ascending), or None
    past either end: Previous on the first neuron must not jump to the last layer's last unit."""
    if not order:
        return None
    i = order.index(here) if here in order else 0
    j = i + delta
    return order[j] if 0 <= j < len(order) else None
