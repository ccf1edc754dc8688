"""A tiny data engine (the worker stack's sandbox app): a SQLite queue of listings, a batch
run (cron), a long-running worker, a health report and a migration script."""
