"""The Azure Batch REST adapter: one client per account, its retry loop and classification, URLs, Batch models."""
