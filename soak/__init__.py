"""`./dev soak`: N terminate messages through Azurite, the local host and the faulty Batch emulator, then reconcile.

The orchestrator (this process) runs the Batch emulator and the managed-identity endpoint, enqueues one message per
job, and runs the local queue host in a child process (`--worker`) so it can be killed for real. Midway it restarts
Azurite (same port and location) and kills and restarts the host. At the end every message id must be accounted for
exactly once: terminated (the emulator's ledger shows the job completed), already done, or a poison record with a
code. Exit status 1 when any message is lost.
"""
