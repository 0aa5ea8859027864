"""Container healthcheck of a worker: ``python -m worker.health``.

Healthy (exit 0) while the worker's own heartbeat reaches the job store: every successful beat
touches ``DEBM_WORKER_HEALTH_FILE`` (worker.lease.Heartbeat), and the file must be younger
than three heartbeat periods, the same life a worker has in /readyz.  A worker that hangs, lost
its store, or never started beating is unhealthy.  Imports neither torch nor Celery.
"""

from __future__ import annotations

import sys
import time

from core.settings import get_settings


def check() -> tuple[bool, str]:
    settings = get_settings()
    path = settings.worker_health_file
    if path is None:
        return False, "DEBM_WORKER_HEALTH_FILE is not set"
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return False, f"no heartbeat yet ({path} does not exist)"
    limit = 3 * settings.heartbeat_seconds
    if age > limit:
        return False, f"last heartbeat {age:.0f} s ago; the limit is {limit:.0f} s"
    return True, f"heartbeat {age:.1f} s ago"


def main() -> int:
    healthy, message = check()
    print(message)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
