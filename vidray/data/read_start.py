"""Every CPU busy from the first second of a Ray Data execution (each epoch is one).

Ray Data 2.60 budgets each operator from the cluster resources its autoscaling
coordinator has granted the execution. The coordinator answers without blocking and
the resource manager refreshes that answer once a second, so every execution starts
with a limit of zero CPUs for 1-2 s. Meanwhile only the executor's liveness rule lets
a task run, and only when none runs: one read task at a time, half the slots of 2
CPUs idle for a second of every epoch. After that the budget admits one task per CPU.

`start_at_full_concurrency` swaps Ray Data's resource-budget policy for one that, while
the limit is still zero, admits as many tasks per operator as the execution may use
CPUs and as many more queued, and otherwise is Ray's own (object-store backpressure
included) but for those queued tasks, which keep a CPU from idling while Ray's
scheduling loop notices that a task ended. Ray has no
public setting for it: ``ExecutionOptions.resource_limits`` is capped by the granted
resources, and ``DataContext.op_resource_reservation_enabled = False`` also drops all
object-store backpressure (an epoch read ahead of a slow consumer fills the object
store). The policy is set on the Dataset's own DataContext, which travels with it to
the process that executes it (Ray Train's split coordinator, a Tune trial).
tests/test_reading.py pins the private parts it uses.
"""

from __future__ import annotations

from typing import Any

import ray
from ray.data._internal.execution import backpressure_policy as policies

# Tasks an operator may have in flight per CPU: one running, one queued (`can_add_input`).
IN_FLIGHT_PER_CPU = 2


class FullStartBudgetPolicy(policies.ResourceBudgetBackpressurePolicy):
    """Ray's resource-budget policy, but not idle while the first budget is unknown."""

    def __init__(self, data_context: Any, topology: Any, resource_manager: Any) -> None:
        super().__init__(data_context, topology, resource_manager)
        options = resource_manager._options
        cpus = min(ray.cluster_resources().get("CPU", 1.0), options.resource_limits.cpu)
        # Ray Train excludes its workers' CPUs from what its datasets may use.
        self.start_tasks = max(1, int(cpus - (options.exclude_resources.cpu or 0.0)))

    def can_add_input(self, op: Any) -> bool:
        active = op.num_active_tasks()
        if self._resource_manager._global_limits.cpu == 0:  # no budget granted yet
            return active < self.start_tasks * IN_FLIGHT_PER_CPU
        if super().can_add_input(op):
            return True
        # Ray counts a task active until its scheduling loop sees it end (0.1-0.2 s on a
        # busy driver), and its CPU idles meanwhile; a task queued at the raylet starts
        # the moment a CPU frees. Only while the operator's outputs fit its budget.
        allocator = self._resource_manager._op_resource_allocator
        budget = allocator.get_budget(op) if allocator is not None else None
        return (
            active < self.start_tasks * IN_FLIGHT_PER_CPU
            and budget is not None
            and not allocator._is_task_submission_blocked_on_output_budget(op, budget)
        )


def start_at_full_concurrency(ds: Any) -> Any:
    """``ds``, set to run one task per CPU from the start of every execution."""
    enabled = [
        FullStartBudgetPolicy if p is policies.ResourceBudgetBackpressurePolicy else p
        for p in policies.ENABLED_BACKPRESSURE_POLICIES
    ]
    ds.context.set_config(policies.ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY, enabled)
    return ds
