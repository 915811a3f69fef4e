"""Flamenco's two-way path variables: storage every worker sees, under different names.

The farm's configuration names folders that are the same storage on every
computer, mounted at a different place per operating system (Flamenco,
compat §6.5)::

    variables = {
      "render": {"is_twoway": True, "values": [
          {"platform": "linux", "value": "/mnt/render"},
          {"platform": "windows", "value": "R:\\\\"},
          {"platforms": ["darwin"], "audience": "workers", "value": "/Volumes/render"}]}}

A file under such a folder needs no transfer: ``is_on_shared_storage`` says so,
``to_variable_form`` turns its path into ``{render}/shot/x.blend`` at submission,
and ``for_platform`` turns that back into the path a given worker uses.

Rules kept from Flamenco: a value for a specific platform overrides ``all``;
values for audience ``workers`` or ``all`` count for workers, ``users`` or
``all`` for the add-on; trailing separators of two-way values are trimmed;
prefixes compare case-insensitively with ``\\`` read as ``/``; when a two-way
variable was expanded, the whole string gets the target platform's separators
(``\\`` on Windows, drive ``F:x`` becomes ``F:\\x``, a UNC ``\\\\server`` stays).
One deliberate difference: a prefix only matches at a folder boundary, so
``/render2/x`` is not under ``render=/render`` (Flamenco would rewrite it to
``{render}2/x``).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Iterable, Mapping

PLATFORMS = ("linux", "windows", "darwin")
AUDIENCES = ("all", "workers", "users")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_-]*)\}")
_DRIVE_RELATIVE = re.compile(r"^([A-Za-z]):(?![\\/])")


class VariablesError(ValueError):
    """The variables configuration is malformed; ``str()`` says where and how to fix it."""


def current_platform() -> str:
    """This computer's platform in Flamenco's words (Go's ``runtime.GOOS``)."""
    if sys.platform.startswith("win"):
        return "windows"
    if sys.platform == "darwin":
        return "darwin"
    return "linux"


@dataclass(frozen=True)
class VariableValue:
    platform: str  # one of PLATFORMS or "all"
    audience: str  # one of AUDIENCES
    value: str


@dataclass(frozen=True)
class Variable:
    name: str
    is_twoway: bool
    values: tuple[VariableValue, ...]

    def value_for(self, platform: str, audience: str) -> str | None:
        """The value for ``platform`` seen by ``audience`` (``workers`` or ``users``)."""
        # A specific platform beats "all"; then a specific audience beats "all".
        for wanted_platform in (platform, "all"):
            for wanted_audience in (audience, "all"):
                for v in self.values:
                    if v.platform == wanted_platform and v.audience == wanted_audience:
                        return v.value
        return None


def _norm(path: str) -> str:
    """For comparing prefixes: forward slashes, case-folded."""
    return path.replace("\\", "/").casefold()


def _under(path: str, prefix: str) -> str | None:
    """The rest of ``path`` after ``prefix`` (with its leading separator), or None."""
    if not prefix:
        return None
    p, pre = _norm(path), _norm(prefix)
    if not p.startswith(pre):
        return None
    rest = path[len(prefix):]
    if rest and rest[0] not in "/\\" and not pre.endswith("/"):
        return None  # '/render2' is not under '/render'
    return rest


def to_platform_separators(text: str, platform: str) -> str:
    if platform != "windows":
        return text.replace("\\", "/")
    text = text.replace("/", "\\")
    return _DRIVE_RELATIVE.sub(r"\1:\\", text)


@dataclass(frozen=True)
class PathVariables:
    variables: Mapping[str, Variable] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: object) -> PathVariables:
        """From Flamenco's ``variables:`` mapping (as parsed from TOML, YAML or JSON)."""
        if config is None:
            return cls()
        if not isinstance(config, dict):
            raise VariablesError("'variables' must map variable names to {is_twoway, values}")
        out: dict[str, Variable] = {}
        for name, spec in config.items():
            where = f"variable {name!r}"
            if not isinstance(name, str) or not _NAME.match(name):
                raise VariablesError(f"{where}: a name is letters, digits, '_' and '-', starting with a letter or '_'")
            if not isinstance(spec, dict):
                raise VariablesError(f"{where}: expected {{is_twoway: bool, values: [...]}}")
            twoway = spec.get("is_twoway", False)
            if not isinstance(twoway, bool):
                raise VariablesError(f"{where}: 'is_twoway' must be true or false")
            raw_values = spec.get("values", [])
            if not isinstance(raw_values, list):
                raise VariablesError(f"{where}: 'values' must be a list of {{platform, audience, value}}")
            values: list[VariableValue] = []
            for i, raw in enumerate(raw_values):
                values.extend(_parse_value(f"{where}, value {i + 1}", raw, twoway))
            out[name] = Variable(name=name, is_twoway=twoway, values=tuple(values))
        return cls(out)

    def two_way(self) -> list[Variable]:
        return [v for v in self.variables.values() if v.is_twoway]

    def shared_roots(self, platform: str | None = None, audience: str = "workers") -> list[str]:
        """The folders, as ``platform`` names them, that are the same storage everywhere."""
        platform = platform or current_platform()
        roots = [v.value_for(platform, audience) for v in self.two_way()]
        return [r for r in roots if r]

    def _match(self, path: str, platform: str, audience: str) -> tuple[Variable, str] | None:
        best: tuple[Variable, str, int] | None = None
        for var in self.two_way():
            value = var.value_for(platform, audience)
            if not value:
                continue
            rest = _under(path, value)
            if rest is not None and (best is None or len(value) > best[2]):
                best = (var, rest, len(value))
        return None if best is None else (best[0], best[1])

    def is_on_shared_storage(self, path: str | PurePath, platform: str | None = None) -> bool:
        """Whether ``path`` (absolute, as ``platform`` names it) lies under a two-way variable."""
        return self._match(str(path), platform or current_platform(), "workers") is not None

    def to_variable_form(self, path: str | PurePath, platform: str | None = None, audience: str = "workers") -> str:
        """``/mnt/render/shot/x.blend`` → ``{render}/shot/x.blend``; other text unchanged.

        What Flamenco does to every setting and metadata string at submission.
        """
        text = str(path)
        match = self._match(text, platform or current_platform(), audience)
        if match is None:
            return text
        var, rest = match
        return "{" + var.name + "}" + rest

    def for_platform(self, text: str, platform: str, *, from_platform: str | None = None,
                     audience: str = "workers") -> str:
        """Expand ``{name}`` for ``platform`` (what Flamenco does at task dispatch).

        One-way variables are replaced by their value; two-way ones too, and then
        the whole string gets the platform's separators. ``from_platform``: a path
        still in that platform's form (e.g. an expanded ``{jobs}``) has its two-way
        prefix swapped for ``platform``'s. Unknown placeholders stay as they are.
        """
        twoway_used = False

        def replace(match: re.Match[str]) -> str:
            nonlocal twoway_used
            var = self.variables.get(match.group(1))
            if var is None:
                return match.group(0)
            value = var.value_for(platform, audience)
            if value is None:
                return match.group(0)
            twoway_used = twoway_used or var.is_twoway
            return value

        out = _PLACEHOLDER.sub(replace, text)
        if from_platform is not None and from_platform != platform:
            found = self._match(out, from_platform, audience)
            if found is not None:
                var, rest = found
                target = var.value_for(platform, audience)
                if target is not None:
                    out, twoway_used = target + rest, True
        return to_platform_separators(out, platform) if twoway_used else out


def _parse_value(where: str, raw: object, twoway: bool) -> Iterable[VariableValue]:
    if not isinstance(raw, dict):
        raise VariablesError(f"{where}: expected {{platform or platforms, audience, value}}")
    value = raw.get("value")
    if not isinstance(value, str):
        raise VariablesError(f"{where}: 'value' must be a string")
    if twoway:
        value = value.rstrip("/\\") or value[:1]  # trailing separators trimmed; '/' itself stays
    audience = raw.get("audience", "all")
    if audience not in AUDIENCES:
        raise VariablesError(f"{where}: 'audience' must be one of {', '.join(AUDIENCES)}, got {audience!r}")
    platforms: list[object]
    if "platforms" in raw:
        if not isinstance(raw["platforms"], list) or not raw["platforms"]:
            raise VariablesError(f"{where}: 'platforms' must be a non-empty list")
        platforms = list(raw["platforms"])
    else:
        platforms = [raw.get("platform", "all")]
    for platform in platforms:
        if platform not in (*PLATFORMS, "all"):
            raise VariablesError(f"{where}: platform must be one of {', '.join(PLATFORMS)} or all, got {platform!r}")
        yield VariableValue(platform=str(platform), audience=str(audience), value=value)


def path_is_under(path: Path, roots: Iterable[str | PurePath]) -> bool:
    """``path`` lies under one of ``roots`` (same rules as variables: folder boundary, no case)."""
    text = str(path)
    return any(_under(text, str(root).rstrip("/\\") or str(root)) is not None for root in roots)
