"""The CLI's exit codes."""

EXIT_OK = 0
EXIT_NOTHING = 1  # nothing matched: an unknown id, a replay or purge that touched nothing
EXIT_USAGE = 2  # usage error, invalid job id or option, bad or missing settings
EXIT_STORAGE = 3  # storage unreachable, access denied or queue missing
EXIT_INTERRUPTED = 130
