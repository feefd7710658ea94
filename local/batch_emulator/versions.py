"""The Batch data-plane api-versions the emulator serves and what each one has."""

from __future__ import annotations

# azure-rest-api-specs specification/batch/data-plane/Azure.Batch: preview/2023-11-01.18.0, preview/2024-02-01.19.0,
# 2024-07-01.20.0 and stable/2025-06-01.21.0 — whose TypeSpec version (and azure-batch 15.1.0's default,
# azure/batch/_configuration.py:38) is the plain "2025-06-01" that goes on the wire.
API_VERSIONS = ("2023-11-01.18.0", "2024-02-01.19.0", "2024-07-01.20.0", "2025-06-01")

# Job - Terminate's `force` query parameter: absent from preview/2024-02-01.19.0/BatchService.json (the
# /jobs/{jobId}/terminate parameters are timeOut, the headers, jobId and an optional body), present in
# stable/2025-06-01.21.0/BatchService.json ("name": "force", "in": "query", "type": "boolean").
FORCE_SINCE = "2024-07-01.20.0"


def _order(version: str) -> str:
    """Versions sort by their date part."""
    return version[:10]


def supports_force(version: str) -> bool:
    """Whether Job - Terminate takes `force` in this api-version."""
    return _order(version) >= _order(FORCE_SINCE)
