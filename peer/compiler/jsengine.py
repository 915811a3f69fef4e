"""One fresh V8 context with the Flamenco host API, limits and readable errors.

Shared by the compiler (runtime.py) and the job-type loader (loader.py).

mini-racer facts this relies on (see ../shared/docs/runtime-facts.md §1):
- a ``MiniRacer`` made in a thread without a running asyncio loop gets its own
  loop thread, and only then does ``timeout_sec`` work; made inside a running
  loop it would block that loop, so we refuse that case;
- values cross as ONE JSON string per call; walking JS proxies is very slow;
- ``//# sourceURL=<name>`` makes V8 name the script in errors and stacks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sys
import time
from datetime import datetime
from functools import cache
from pathlib import Path
from types import TracebackType
from typing import Any

from py_mini_racer import (
    JSEvalException,
    JSOOMException,
    JSParseException,
    JSTimeoutException,
    MiniRacer,
)

from .model import CompileError, CompileLimits

_log = logging.getLogger("peer.compiler.script")

# A "/" cannot occur in a file name, so no job-type script can be confused
# with the host API in stack traces.
HOST_API_FILE = "flamenco-peer/host_api.js"
_HOST_API_PATH = Path(__file__).with_name("host_api.js")

# Time allowed to fetch print() output after a script failed.
_MESSAGE_RESCUE_TIMEOUT_S = 0.5

# "file.js:12: TypeError: ..." -- the first line of a V8 exception text.
_V8_LOCATION = re.compile(r"^(?P<file>.*?):(?P<line>\d+): (?P<text>.*)$")

# Errors that point at a bug in the script rather than at the job settings.
_PROGRAMMING_ERRORS = (
    "SyntaxError:",
    "TypeError:",
    "ReferenceError:",
    "RangeError:",
    "EvalError:",
    "URIError:",
)

_GO_PLATFORMS = {"win32": "windows", "cygwin": "windows", "darwin": "darwin"}


@cache
def host_api_source() -> str:
    return _HOST_API_PATH.read_text(encoding="utf-8")


def go_platform() -> str:
    """This machine's platform spelled like Go's ``runtime.GOOS``."""
    if sys.platform.startswith("linux"):
        return "linux"
    if sys.platform.startswith("freebsd"):
        return "freebsd"
    return _GO_PLATFORMS.get(sys.platform, sys.platform)


def _refuse_inside_event_loop() -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(
        "job-type scripts block while they run and cannot be time-limited on the "
        "event loop thread; call this from a worker thread (asyncio.to_thread) or "
        "use the *_async variant"
    )


def _current_cwd() -> str | None:
    try:
        return os.getcwd()
    except OSError:
        return None


def format_mib(n_bytes: int) -> str:
    return f"{n_bytes / (1024 * 1024):g} MiB"


class JsSession:
    """A fresh V8 context holding one job-type script.

    Use as a context manager; the context is closed on exit.  Every method
    raises :class:`CompileError` (kind ``script-error``, ``timeout`` or
    ``memory-limit``) when the JavaScript fails.  All evaluations share one
    deadline of ``limits.timeout_s`` counted from construction.
    """

    def __init__(self, script_file: str, limits: CompileLimits, created: datetime | None = None) -> None:
        _refuse_inside_event_loop()
        self.script_file = script_file
        self.limits = limits
        self._deadline = time.monotonic() + limits.timeout_s
        self._script_lines = 0
        self._mr: MiniRacer | None = MiniRacer()
        try:
            self._mr.set_hard_memory_limit(limits.max_memory_bytes)
            self._eval(f"{host_api_source()}\n//# sourceURL={HOST_API_FILE}", is_script=False)
            self.call_host("configure", self._host_config(created or datetime.now().astimezone()))
        except CompileError as err:
            # Nothing of the job-type script ran yet: this is our bug, not the user's.
            self.close()
            raise RuntimeError(f"the Flamenco Peer host API failed to start: {err.cause}") from err
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _host_config(created: datetime) -> dict[str, Any]:
        offset = created.astimezone().utcoffset()
        return {
            "uuidSeed": list(os.urandom(16)),
            "cwd": _current_cwd(),
            "platform": go_platform(),
            "tzOffsetMinutes": offset.total_seconds() / 60 if offset is not None else 0,
        }

    # -- lifetime --------------------------------------------------------

    def close(self) -> None:
        if self._mr is not None:
            mr, self._mr = self._mr, None
            mr.close()

    def __enter__(self) -> JsSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- evaluation ------------------------------------------------------

    def run_script(self, source: str) -> None:
        """Run the job-type script's top level (defines JOB_TYPE, compileJob...)."""
        self._script_lines = source.count("\n") + 1
        self._eval(f"{source}\n//# sourceURL={self.script_file}", is_script=True)

    def call_host(self, method: str, *args: Any) -> Any:
        """Call ``__flamencoPeerHost.<method>`` with JSON arguments, return its JSON."""
        encoded = ", ".join(json.dumps(a) for a in args)
        return self.eval_host(f"__flamencoPeerHost.{method}({encoded})")

    def eval_host(self, js_call: str) -> Any:
        """Evaluate a host-API call that returns a JSON string; return it decoded."""
        return json.loads(self.eval_host_text(js_call))

    def eval_host_text(self, js_call: str) -> str:
        """Evaluate a host-API call that returns a JSON string; return the text."""
        result = self._eval(js_call, is_script=False)
        if not isinstance(result, str):
            raise CompileError(
                "invalid-result",
                f"{self.script_file}: the host API returned {type(result).__name__} instead of JSON "
                "(was a Flamenco Peer built-in overwritten by the script?) — fix the job-type script",
                script=self.script_file,
            )
        return result

    def export_global(self, name: str) -> tuple[bool, Any]:
        """(defined, value) of a global of the script, copied out as JSON."""
        if not name.isidentifier():
            raise ValueError(f"not a JavaScript identifier: {name!r}")
        found = self.eval_host(
            f"__flamencoPeerHost.exportValue(typeof {name} === 'undefined' ? undefined : {name})"
        )
        if "invalidResult" in found:
            raise CompileError(
                "invalid-result",
                f"{self.script_file}: {name} cannot be converted to JSON ({found['invalidResult']}) "
                "— fix the job-type script",
                script=self.script_file,
                cause=found["invalidResult"],
            )
        return bool(found["defined"]), found.get("value")

    def messages(self) -> list[str]:
        """print()/alert() output so far; also written to the Python log."""
        return self._log_messages(self.call_host("messages"))

    def _log_messages(self, found: dict[str, Any]) -> list[str]:
        texts: list[str] = []
        for msg in found["messages"]:
            if msg["level"] == "warning":
                _log.warning("%s: %s", self.script_file, msg["text"])
                texts.append(f"alert: {msg['text']}")
            else:
                _log.info("%s: %s", self.script_file, msg["text"])
                texts.append(msg["text"])
        if found["dropped"]:
            texts.append(f"({found['dropped']} more messages were dropped)")
        return texts

    def _eval(self, code: str, *, is_script: bool) -> Any:
        mr = self._mr
        assert mr is not None, "JsSession used after close()"
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise self._timeout_error()
        try:
            return mr.eval(code, timeout_sec=remaining)
        except JSTimeoutException:
            self._settle()
            raise self._timeout_error() from None
        except JSOOMException:
            raise self._memory_error() from None
        except JSEvalException as exc:
            if mr.was_hard_memory_limit_reached():
                raise self._memory_error() from None
            error = self._script_error(str(exc), is_parse=is_script and isinstance(exc, JSParseException))
            error.messages = self._rescue_messages()
            raise error from None

    def _settle(self) -> None:
        """Wait until V8 has finished terminating a timed-out evaluation.

        V8 reports the termination later, through the context's event loop; if
        we closed the context first, that report would hit a closed loop.  A
        trivial evaluation queues behind the terminated one.
        """
        if self._mr is not None:
            try:
                self._mr.eval("0", timeout_sec=_MESSAGE_RESCUE_TIMEOUT_S)
            except JSEvalException:
                pass

    def _rescue_messages(self) -> list[str]:
        """Best effort: what the script printed before it failed.

        Gets its own small time budget: the script's may be used up, and these
        messages often explain the failure.
        """
        mr = self._mr
        if mr is None:
            return []
        try:
            raw = mr.eval("__flamencoPeerHost.messages()", timeout_sec=_MESSAGE_RESCUE_TIMEOUT_S)
        except JSEvalException:
            return []
        return self._log_messages(json.loads(raw)) if isinstance(raw, str) else []

    # -- error translation -----------------------------------------------

    def _timeout_error(self) -> CompileError:
        return CompileError(
            "timeout",
            f"job type script '{self.script_file}' did not finish within {float(self.limits.timeout_s)} s "
            "(infinite loop?) and was stopped — fix the job-type script and submit again",
            script=self.script_file,
            cause="timeout",
        )

    def _memory_error(self) -> CompileError:
        return CompileError(
            "memory-limit",
            f"job type script '{self.script_file}' used more than "
            f"{format_mib(self.limits.max_memory_bytes)} of memory and was stopped "
            "(a runaway loop, or a huge frame range?) — check the job settings or fix the "
            "job-type script, and submit again",
            script=self.script_file,
            cause="memory limit reached",
        )

    def _script_error(self, v8_text: str, *, is_parse: bool) -> CompileError:
        first_line = v8_text.split("\n", 1)[0]
        match = _V8_LOCATION.match(first_line)
        if match:
            where, line, cause = match["file"], int(match["line"]), match["text"]
        else:
            where, line, cause = "", None, first_line
        if is_parse and where == "<anonymous>":
            # V8 sometimes ignores sourceURL when parsing fails before reaching it.
            where = self.script_file
        if where != self.script_file:
            # Thrown inside the host API (e.g. frameChunker) or the bridge call:
            # report the innermost frame that belongs to the script.
            frame = re.search(rf"(?:\(|at ){re.escape(self.script_file)}:(\d+):\d+", v8_text)
            line = int(frame[1]) if frame else None
        if line is not None and self._script_lines and line > self._script_lines:
            line = self._script_lines  # the error is at the end of the file
        if cause.startswith(_PROGRAMMING_ERRORS):
            hint = "fix the job-type script and submit again"
        else:
            hint = "check the job settings (or the job-type script) and submit again"
        location = f"{self.script_file}:{line}" if line is not None else self.script_file
        return CompileError(
            "script-error",
            f"{location}: {cause} — {hint}",
            script=self.script_file,
            line=line,
            cause=cause,
        )
