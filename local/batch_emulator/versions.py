"""The Batch data-plane api-versions the emulator serves and what each one has."""

from __future__ import annotations

# Exactly the stable versions of azure-rest-api-specs specification/batch/data-plane/Batch/readme.md (one
# `input-file: stable/<folder>/BatchService.json` per `package-*` tag, checked at commit 05acfc6c), newest first.
# The wire value is each file's info.version: the folder name, and for the newest folder (stable/2025-06-01, a
# TypeSpec-generated file) the plain "2025-06-01" that is also azure-batch 15.1.0's default
# (azure/batch/_configuration.py). "2025-06-01.21.0" is no Batch version: no spec folder or info.version has it.
API_VERSIONS = (
    "2025-06-01",
    "2024-07-01.20.0",
    "2024-02-01.19.0",
    "2023-11-01.18.0",
    "2023-05-01.17.0",
    "2022-10-01.16.0",
    "2022-01-01.15.0",
    "2021-06-01.14.0",
    "2020-09-01.12.0",
    "2020-03-01.11.0",
    "2019-08-01.10.0",
    "2019-06-01.9.0",
    "2018-12-01.8.0",
    "2018-08-01.7.0",
    "2018-03-01.6.1",
    "2017-09-01.6.0",
    "2017-06-01.5.1",
    "2017-05-01.5.0",
    "2017-01-01.4.0",
    "2016-07-01.3.1",
    "2016-02-01.3.0",
    "2015-12-01.2.2",
)

# Job - Terminate's `force` query parameter: absent from the 2024-02-01.19.0 spec (the /jobs/{jobId}/terminate
# parameters are timeout, the headers, jobId and an optional body), present in stable/2025-06-01/BatchService.json
# ("name": "force", "in": "query", "type": "boolean"); the contract (§3) puts its start at 2024-07-01.20.0.
# The emulator applies the same rule to Job Schedule - Terminate's `force` (azure-batch 15.1.0 sends it there too).
FORCE_SINCE = "2024-07-01.20.0"

# The server-timeout query parameter's spelling. stable/2025-06-01/BatchService.json (TypeSpec-generated) names it
# "timeOut" on every operation; every older stable file, 2024-07-01.20.0 included, names it "timeout" (stable/
# 2024-07-01.20.0/BatchService.json, e.g. Application_List: "name": "timeout"; learn.microsoft.com's
# Pool - Enable Auto Scale page for 2024-07-01.20.0 shows `?timeout={timeout}&api-version=2024-07-01.20.0` and for
# 2025-06-01 `&timeOut={timeOut}`). So `timeOut` starts at 2025-06-01, not at 2024-07-01.20.0.
TIME_OUT_SINCE = "2025-06-01"


def _order(version: str) -> str:
    """Versions sort by their date part."""
    return version[:10]


def supports_force(version: str) -> bool:
    """Whether Job - Terminate (and Job Schedule - Terminate) take `force` in this api-version."""
    return _order(version) >= _order(FORCE_SINCE)


def timeout_name(version: str) -> str:
    """How this api-version's spec spells the server-timeout query parameter: `timeOut` or `timeout`."""
    return "timeOut" if _order(version) >= _order(TIME_OUT_SINCE) else "timeout"
