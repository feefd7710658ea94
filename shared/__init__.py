"""batch-terminator's deployed package, in layers; a module imports only from its own layer's package or below.

    contract    the spec (docs/CONTRACT.md) as types and wire forms; no I/O
    telemetry   the §8 records and the metrics
    config      every setting, declared once, read once
    transport   the HTTP sessions both adapters share
    batch       the Azure Batch REST adapter       storage   the Azure Storage adapter (queues, the incident table)
    rules       decisions on data: guards, selection, sweep policy, alerts, the incident state machine
    services    one module per function folder, same name: orchestration over injected adapters
    wiring      the composition root: builds each process object once

The function folders sit on top; ops/, local/, soak/, bench/ and tests/ may import shared, never the reverse.
tests/repo/test_layers.py holds the code to this, and to having no import cycle.
"""

# Lowest first; packages in one layer may not import each other.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("contract",),
    ("telemetry",),
    ("config",),
    ("transport",),
    ("batch", "storage"),
    ("rules",),
    ("services",),
    ("wiring",),
)
