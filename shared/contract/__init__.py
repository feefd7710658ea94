"""The spec (docs/CONTRACT.md) as types and wire forms: messages, records, outcomes, the error tree; no I/O."""
