"""One service per function folder, same name: orchestration over injected adapters."""
