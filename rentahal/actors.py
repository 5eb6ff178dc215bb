"""Who made a change: the keyword-only `acting_user` every action takes.

It is one of:
- a Django auth user (`django.contrib.auth`), for the admin and the DRF APIs (staff);
- a broker user (`accounts.models.User`), for a sysop's frame on /ws (a sysop's cookie
  never authorises an HTTP write: realms.permissions);
- None, for the system: management commands, startup, tests' fixtures.

Entry points decide who may act: the consumer's sysop-only frames, the APIs' permission
classes, the admin's permissions. An action checks only rules that tie the actor to the
target (a sysop cannot ban themselves) and names the actor in its log line and its events.
"""


def describe_actor(acting_user) -> str:
    """Return who acted, for logs and events: `system`, `sysop <guid>` or `staff <username>`."""
    if acting_user is None:
        return "system"
    guid = getattr(acting_user, "guid", None)
    if guid is not None:
        return f"sysop {guid}"
    return f"staff {acting_user.get_username()}"
