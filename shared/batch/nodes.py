"""*Compute Node - List*: a pool's nodes and their states, as frozen models."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared.batch.answers import unexpected
from shared.batch.client import BatchClient

# A node's id and state are all a stuck termination's record counts (docs/CONTRACT.md §5b).
NODE_SELECT = "id,state"
PAGE_SIZE = 1000


@dataclass(frozen=True)
class ComputeNode:
    """A compute node of a pool: its id and state (Batch's BatchNodeState, e.g. idle, unusable, offline)."""

    id: str
    state: str | None = None

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> ComputeNode | None:
        """A node of the list, or None when it has no id."""
        node_id = document.get("id")
        if not isinstance(node_id, str) or not node_id:
            return None
        state = document.get("state")
        return cls(node_id, state if isinstance(state, str) and state else None)


def list_nodes(client: BatchClient, pool_id: str) -> tuple[ComputeNode, ...]:
    """GET /pools/{poolId}/nodes, every page; BatchCallFailed when it fails (PoolNotFound for a deleted pool)."""
    try:
        url = client.urls.resource(
            "pools", pool_id, "nodes", query={"maxresults": str(PAGE_SIZE), "$select": NODE_SELECT}
        )
    except ValueError as exc:  # a pool id Batch could not have given: never put it in a URL
        raise unexpected("the job's pool id failed validation", operation="Compute Node - List") from exc
    return tuple(
        node for item in client.pages(url, label=f"list nodes pool={pool_id}") if (node := ComputeNode.from_json(item))
    )
