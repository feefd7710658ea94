"""Pools over REST: *Pool - Get*, *- Resize*, *- Stop Resize*, *- Disable/Enable Auto Scale* (docs/CONTRACT.md §10)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.batch.client import BatchClient
from shared.batch.jobs import metadata_of
from shared.contract.errors import BatchCallFailed, BatchError, BatchErrorDetail
from shared.contract.incident import ActionResult, PoolBefore

POOL_SELECT = (
    "id,allocationState,enableAutoScale,autoScaleFormula,autoScaleEvaluationInterval,"
    "targetDedicatedNodes,targetLowPriorityNodes,currentDedicatedNodes,currentLowPriorityNodes,metadata"
)
# Batch refuses a second Enable Auto Scale within 30 s (Pool - Enable Auto Scale): the service's code and the SDKs'.
ENABLE_AUTOSCALE_REFUSALS = frozenset({"TooManyEnableAutoScaleRequests", "AutoScaleTooManyRequestsToEnable"})
ENABLE_AUTOSCALE_SPACING_SECONDS = 30.0
# Waiting for a stopped resize to end: polls of Pool - Get, this far apart, at most this many.
STEADY_POLL_SECONDS = 5.0
STEADY_POLLS = 24


@dataclass(frozen=True)
class Pool:
    """The properties of a Batch pool the kill switch reads (Batch's REST names)."""

    id: str
    allocation_state: str | None = None  # steady, resizing, stopping
    enable_auto_scale: bool = False
    auto_scale_formula: str | None = None
    auto_scale_evaluation_interval: str | None = None  # ISO 8601 duration, as Batch writes it
    target_dedicated_nodes: int = 0
    target_low_priority_nodes: int = 0
    current_dedicated_nodes: int = 0
    current_low_priority_nodes: int = 0
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def resizing(self) -> bool:
        """Whether a resize (or its stop) is under way: Resize and Enable Auto Scale would be refused."""
        return self.allocation_state not in (None, "steady")

    def before(self) -> PoolBefore:
        """The five fields an incident records before acting."""
        return PoolBefore(
            enable_auto_scale=self.enable_auto_scale,
            auto_scale_formula=self.auto_scale_formula,
            auto_scale_evaluation_interval=self.auto_scale_evaluation_interval,
            target_dedicated_nodes=self.target_dedicated_nodes,
            target_low_priority_nodes=self.target_low_priority_nodes,
        )

    @classmethod
    def from_json(cls, document: Mapping[str, Any], pool_id: str) -> Pool:
        """A Pool from a Pool - Get answer."""

        def number(name: str) -> int:
            value = document.get(name)
            return value if isinstance(value, int) and not isinstance(value, bool) else 0

        def text(name: str) -> str | None:
            value = document.get(name)
            return value if isinstance(value, str) and value else None

        return cls(
            id=text("id") or pool_id,
            allocation_state=text("allocationState"),
            enable_auto_scale=document.get("enableAutoScale") is True,
            auto_scale_formula=text("autoScaleFormula"),
            auto_scale_evaluation_interval=text("autoScaleEvaluationInterval"),
            target_dedicated_nodes=number("targetDedicatedNodes"),
            target_low_priority_nodes=number("targetLowPriorityNodes"),
            current_dedicated_nodes=number("currentDedicatedNodes"),
            current_low_priority_nodes=number("currentLowPriorityNodes"),
            metadata=metadata_of(document),
        )


class Pools:
    """One account's pools, through that account's client; BatchCallFailed on failure."""

    def __init__(self, client: BatchClient, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self._client = client
        self._sleep = sleep

    def get(self, pool_id: str) -> Pool:
        """Pool - Get (404 PoolNotFound raises BatchCallFailed)."""
        url = self._client.urls.resource("pools", pool_id, query={"$select": POOL_SELECT})
        return Pool.from_json(self._client.get_json(url, label=f"get pool={pool_id}"), pool_id)

    def resize(
        self, pool_id: str, dedicated: int, low_priority: int, *, deallocation: str | None = None
    ) -> ActionResult:
        """Pool - Resize to these targets (202); `deallocation` is nodeDeallocationOption (e.g. terminate)."""
        body: dict[str, Any] = {"targetDedicatedNodes": dedicated, "targetLowPriorityNodes": low_priority}
        if deallocation is not None:
            body["nodeDeallocationOption"] = deallocation
        return self._action(pool_id, "resize", body)

    def stop_resize(self, pool_id: str) -> ActionResult:
        """Pool - Stop Resize (202)."""
        return self._action(pool_id, "stopresize", None)

    def disable_auto_scale(self, pool_id: str) -> ActionResult:
        """Pool - Disable Auto Scale (200)."""
        return self._action(pool_id, "disableautoscale", None)

    def enable_auto_scale(self, pool_id: str, formula: str | None, interval: str | None) -> ActionResult:
        """Pool - Enable Auto Scale with this formula and interval; Batch's 30 s refusal is waited out."""
        body: dict[str, Any] = {}
        if formula is not None:
            body["autoScaleFormula"] = formula
        if interval is not None:
            body["autoScaleEvaluationInterval"] = interval
        refusals = 0
        while True:
            try:
                return self._action(pool_id, "enableautoscale", body)
            except BatchCallFailed as exc:
                # docs/CONTRACT.md §10: that refusal (503 or 409) is transient; Batch takes the enable after 30 s.
                if exc.error.code not in ENABLE_AUTOSCALE_REFUSALS or refusals >= 2:
                    raise
                refusals += 1
                self._sleep(ENABLE_AUTOSCALE_SPACING_SECONDS)

    def steady(self, pool_id: str) -> Pool:
        """The pool once no resize is under way (after a Stop Resize); BatchCallFailed (transient) if it stays so."""
        for poll in range(STEADY_POLLS + 1):
            pool = self.get(pool_id)
            if not pool.resizing:
                return pool
            if poll < STEADY_POLLS:
                self._sleep(STEADY_POLL_SECONDS)
        error = BatchError(
            "PoolBeingResized",
            f"pool {pool_id} is still {pool.allocation_state} after {STEADY_POLLS * STEADY_POLL_SECONDS:.0f} s",
            (BatchErrorDetail("poolId", pool_id), BatchErrorDetail("allocationState", str(pool.allocation_state))),
        )
        raise BatchCallFailed(error, attempts=STEADY_POLLS + 1, transient=True)

    def _action(self, pool_id: str, action: str, body: Mapping[str, Any] | None) -> ActionResult:
        url = self._client.urls.resource("pools", pool_id, action)
        response = self._client.post(url, body, operation=f"pool.{action}", label=f"{action} pool={pool_id}")
        return ActionResult(response.status_code, None)
