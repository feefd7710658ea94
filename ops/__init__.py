"""Operator command line of batch-terminator (`batch-terminator`, or `python -m ops`); never deployed.

Settings are the function's own: AzureWebJobsStorage (or AzureWebJobsStorage__queueServiceUri, used with
DefaultAzureCredential), TERMINATE_QUEUE_NAME, POISON_QUEUE_NAME (default `<queue>-poison`) and host.json's
messageEncoding. What the environment lacks comes from the `Values` of local.settings.json, or of
local.settings.sample.json when there is no local.settings.json (both in the project folder, wherever the command
runs). The AzureWebJobsStorage* settings, and the two queue names, are each taken whole from one source, never
mixed. `UseDevelopmentStorage=true` is left to azure-storage-queue, which maps it to Azurite's well-known
devstoreaccount1 on http://127.0.0.1:10001 (the local run command's Azurite). `--connection-string`, `--queue`
and `--poison-queue` override; `--queue` alone implies `<queue>-poison`.

`incidents ...` and `kill` (ops.incident_commands, docs/CONTRACT.md §10) read only the storage settings
(AzureWebJobsStorage, or its identity-based __queueServiceUri/__tableServiceUri/__accountName), INCIDENT_QUEUE_NAME
and INCIDENT_TABLE_NAME (those two taken whole from one source), KILL_SWITCH_* as the app validates them, and
BATCH_ACCOUNTS to check `kill --account`; no trigger queue and no Batch account. They never call Batch: they read
the incident table and put commands on the incident queue, and kill_switch runs them.

Reading the poison queue: Azure Storage peeks at most 32 messages per call. `list`, `show` and `replay --dry-run`
peek; only when the peek comes back full (32) and more are needed does the CLI receive every visible record with a
5-minute visibility timeout and then make them visible again at once (update_message with visibility_timeout=0).
`replay` and `purge` always receive (they need pop receipts to delete) and release whatever they did not delete.
While records are held other readers do not see them; if the CLI is killed they reappear on their own after
5 minutes. Reading never loses a record; it does raise the poison messages' dequeue count, which nothing uses.

Exit codes (ops.exit_codes): 0 ok; 1 nothing matched (`poison show` or `incidents show` of an unknown id;
`poison replay`/`purge` that replayed/deleted nothing); 2 usage error, invalid job id or option, bad or missing
settings, an unknown incident or a command its state does not accept; 3 storage unreachable, access denied or
queue or table missing; 130 interrupted.
"""
