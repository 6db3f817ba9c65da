"""Named building blocks (backbones, local losses, context modes): adding one is one decorated function.

    BACKBONES = Registry("architecture")

    @BACKBONES.register("resnet18")
    def resnet18(in_channels, num_classes): ...

An entry may also match a family of names by a regular expression (`pattern`), its groups passed to the
function first (e.g. `resnet(\\d+)` for every CIFAR ResNet depth); its own name is then one example.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from contsup.errors import ContsupError

F = TypeVar("F", bound=Callable[..., Any])


class Registry(Generic[F]):
    """Functions by name (or by name pattern) for one kind of building block."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, tuple[re.Pattern[str], F, str]] = {}

    def register(self, name: str, pattern: str | None = None, help: str = "") -> Callable[[F], F]:
        """Decorator: register a function as `name` (and as every name matching `pattern`)."""

        def add(fn: F) -> F:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = (re.compile(pattern or re.escape(name), re.ASCII), fn, help or name)
            return fn

        return add

    def names(self) -> list[str]:
        """One example name per entry, in registration order."""
        return list(self._entries)

    def describe(self) -> str:
        """The accepted names, for messages and help texts."""
        return ", ".join(h for _, _, h in self._entries.values())

    def __getitem__(self, text: str) -> F:
        """The function for a name, with a pattern's groups bound first; an unknown name raises ContsupError."""
        # Exact names first, then the families (so "resnet18" is not taken for a member of "resnet(\\d+)").
        for regex, fn, _ in sorted(self._entries.values(), key=lambda e: e[0].groups > 0):
            match = regex.fullmatch(text)
            if match:
                return functools.partial(fn, *match.groups())  # type: ignore[return-value]
        raise ContsupError(f"unknown {self.kind} {text!r}; choose from {self.describe()}")
