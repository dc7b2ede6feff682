"""A tiny name → object registry with did-you-mean errors.

Every pluggable stage (advantage estimators, policy losses, rewards, synthetic tasks, …) registers its
functions here by name; valid option lists always come from the registry itself, never from copies.
"""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


def closest(name: str, options: list[str] | tuple[str, ...]) -> str | None:
    """The closest option to `name`, or None when nothing is similar."""
    hits = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    return hits[0] if hits else None


def unknown_options(given, valid: list[str], where: str, what: str) -> list[str]:
    """One error per option in `given` that is not in `valid`: `where.OPTION: unknown option of WHAT; did you mean
    …? (valid: …)` — `where` is the config key holding the options (e.g. `rollout.extra_passes[0].kwargs`)."""
    errors = []
    for option in given:
        if option not in valid:
            hint = closest(option, valid)
            extra = f"; did you mean {hint!r}?" if hint else ""
            errors.append(f"{where}.{option}: unknown option{what}{extra} (valid: {', '.join(valid) or 'none'})")
    return errors


class UnknownNameError(KeyError):
    """A registry lookup failed; the message lists the valid names and a suggestion."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0])


class Registry(Generic[T]):
    """Holds named objects of one kind (`kind` appears in error messages)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            hint = closest(name, self.names())
            extra = f"; did you mean {hint!r}?" if hint else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}{extra} (valid: {', '.join(self.names())})"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
