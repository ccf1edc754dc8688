"""One file per concern. Each step builds its shell commands with small pure functions
and runs them through `Remote.run` (fabfile/remote.py)."""
