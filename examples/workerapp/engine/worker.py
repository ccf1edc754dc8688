"""python -m engine.worker: the long-running worker. It takes one job at a time (JOB_SECONDS
long, default 2); on SIGTERM it finishes the job in progress, writes it to
logs/worker-jobs.log, and exits."""

from __future__ import annotations

import os
import signal
import time

stopping = False


def _stop(signum: int, frame: object) -> None:
    global stopping
    stopping = True


def main() -> None:
    signal.signal(signal.SIGTERM, _stop)
    seconds = float(os.environ.get("JOB_SECONDS", "2"))
    release = os.path.basename(os.getcwd())
    os.makedirs("logs", exist_ok=True)
    job = 0
    while not stopping:
        job += 1
        end = time.monotonic() + seconds
        while time.monotonic() < end:  # the job: never cut short by SIGTERM
            time.sleep(0.05)
        with open("logs/worker-jobs.log", "a") as fh:
            fh.write(f"{time.time():.3f} {release} job {job} done{' after SIGTERM' if stopping else ''}\n")


if __name__ == "__main__":
    main()
