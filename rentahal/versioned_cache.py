"""Configuration that every process caches and trusts while its version in Redis is unchanged.

The pool configuration (`pools.config`) and the realm registry (`realms.registry`) are read
on every query and change a few times a day: each process keeps what it loaded and checks
one Redis key, instead of reading the database per query. A save bumps the key.
"""
import threading
import uuid
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from django.conf import settings
from django.db import transaction

from rentahal.queues import client_for_url


class Versioned(Protocol):
    version: str


Value = TypeVar("Value", bound=Versioned)


class VersionedCache(Generic[Value]):
    """`load(version)` builds the value from the database and stamps it with the version."""

    def __init__(self, version_key: str, load: Callable[[str], Value]):
        self.version_key = version_key
        self.load = load
        self._value: Value | None = None
        self._lock = threading.Lock()

    @staticmethod
    def client():
        return client_for_url(settings.REDIS_URL, decode_responses=True)

    def last_loaded(self) -> Value | None:
        """Return what this process loaded last, current or not (the caller checks `version`)."""
        return self._value

    def at(self, version: str | None) -> Value:
        """Return the value for this version (as read from Redis), loading it when it moved on."""
        value = self._value
        if value is not None and value.version == version:
            return value
        if version is None:
            version = self.seed_version()
        value = self.load(version)
        with self._lock:
            self._value = value
        return value

    def current(self) -> Value:
        return self.at(self.client().get(self.version_key))

    def seed_version(self) -> str:
        """Give a fresh (or flushed) Redis a version no process can have cached."""
        connection = self.client()
        connection.set(self.version_key, uuid.uuid4().hex, nx=True)
        return connection.get(self.version_key)

    def bump(self) -> None:
        self.client().set(self.version_key, uuid.uuid4().hex)

    def changed(self) -> None:
        """Invalidate every process's value now and again once the change commits.

        The first bump makes processes reload at once (a test's or an admin's change is seen
        by the next query); the second covers a process that reloaded between the write and
        the commit and so cached the old rows under the new version.
        """
        self.bump()
        transaction.on_commit(self.bump)
