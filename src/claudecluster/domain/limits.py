"""A task's limits with the run's defaults filled in: the one rule, asked by the driver
when it dispatches an attempt and by ``run``'s preview when it shows what applies."""

from __future__ import annotations

import msgspec

from claudecluster.events.model import TaskLimits, TaskSpec

__all__ = ["with_default_limits"]


def with_default_limits(spec: TaskSpec, defaults: TaskLimits) -> TaskSpec:
    """``spec`` with every limit it leaves unset taken from the run's ``defaults``.

    A task's own limits win field by field. The driver applies this where an attempt is
    dispatched, so a retry's extra room grows from the limit the attempt really had.
    """
    own = spec.limits
    filled = {
        field: getattr(defaults, field)
        for field in own.__struct_fields__
        if getattr(own, field) is None and getattr(defaults, field) is not None
    }
    if not filled:
        return spec
    return msgspec.structs.replace(spec, limits=msgspec.structs.replace(own, **filled))
