"""Named plug-ins of one kind (search methods, pruners, search spaces): register, list, look up."""

from __future__ import annotations

from typing import Generic, TypeVar

from .errors import DassError

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries keyed by their ``name`` attribute; an unknown name is a :class:`DassError` listing the known ones."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, entry: T) -> T:
        """Add ``entry`` under ``entry.name`` (usable as a class decorator); a later entry replaces an earlier one."""
        name = getattr(entry, "name", "")
        if not name:
            raise ValueError(f"{getattr(entry, '__name__', type(entry).__name__)} needs a non-empty name "
                             f"to be registered as a {self.kind}")
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise DassError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries
