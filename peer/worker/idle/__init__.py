"""When this computer may render: worker mode, the user's idle time, the sleep schedule.

``sources`` measures how long the user has left the machine alone;
``policy`` turns that, the worker mode and the schedule into a verdict with a
reason the user can read in ``flamenco-peer status``.
"""

from .policy import (ASLEEP, AVAILABLE, DISABLED, ON_SHUTDOWN, UNKNOWN_IDLE, USER_ACTIVE, WORKER_MODES, Availability,
                     AvailabilityPolicy, policy_from_settings)
from .sources import IDLE_FILE_ENV, FileIdleSource, IdleSource, IdleSourceError, choose_source

__all__ = [
    "ASLEEP", "AVAILABLE", "DISABLED", "ON_SHUTDOWN", "UNKNOWN_IDLE", "USER_ACTIVE", "WORKER_MODES", "Availability",
    "AvailabilityPolicy", "policy_from_settings", "IDLE_FILE_ENV", "FileIdleSource", "IdleSource", "IdleSourceError",
    "choose_source",
]
