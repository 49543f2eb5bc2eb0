"""The plugin's settings: each one a command-line option, an environment variable and an ini key,
resolved in one place in one order (command line, then environment, then ini, then the default).

This module imports neither torch nor pytest, so ``pytest --help`` stays fast.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Optional

from .worker_devices import parse_worker_devices

__all__ = ["OPTIONS", "Option", "Settings", "SettingsError", "resolve_settings"]


class SettingsError(ValueError):
    """A setting's value is malformed; the message names the option and what it accepts."""


def _comma_list(text: str) -> list[str]:
    parts = [part.strip() for part in text.split(",") if part.strip()]
    repeated = sorted({part for part in parts if parts.count(part) > 1})
    if repeated:
        raise ValueError(f"{', '.join(repeated)} given more than once; name each once")
    return parts


#: torch's device types (``torch.device`` accepts these, with an optional ``:index``).
DEVICE_TYPES = (
    "cpu",
    "cuda",
    "mps",
    "xpu",
    "meta",
    "hip",
    "mtia",
    "hpu",
    "xla",
    "lazy",
    "ipu",
    "maia",
    "ve",
    "fpga",
    "vulkan",
    "mkldnn",
    "opengl",
    "opencl",
    "ideep",
    "privateuseone",
)
_DEVICE = re.compile(r"^([a-z][a-z0-9_]*)(?::(0|[1-9][0-9]*))?$")


def _device_list(text: str) -> list[str]:
    devices = _comma_list(text)
    for device in devices:
        match = _DEVICE.match(device)
        if match is None or match.group(1) not in DEVICE_TYPES:
            raise ValueError(
                f"unknown device {device!r}; allowed: a torch device type ({', '.join(DEVICE_TYPES[:5])}, ...), "
                "optionally with an index, like cpu, cuda, cuda:1"
            )
    return devices


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be >= 0")
    return value


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true or false")


@dataclass(frozen=True)
class Option:
    """One setting: its names in each source, how to parse it, its default and help text."""

    dest: str
    flag: str
    env: str
    ini: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    metavar: str = ""
    is_flag: bool = False  # a command-line switch without a value

    @property
    def ini_type(self) -> Literal["bool", "int", "string"]:
        """The ini key's type for pytest (``int`` where pytest knows it: 9.x; else a string this module parses)."""
        if self.is_flag:
            return "bool"
        return "int" if self.parse is _non_negative_int else "string"


OPTIONS: tuple[Option, ...] = (
    Option(
        dest="customop_devices",
        flag="--customop-devices",
        env="CUSTOMOP_DEVICES",
        ini="customop_devices",
        parse=_device_list,
        default=None,
        metavar="LIST",
        help="comma-separated devices to run customop checks on (default: cpu plus every "
        "accelerator present). Marker devices outside this list are skipped with a reason.",
    ),
    Option(
        dest="customop_checks",
        flag="--customop-checks",
        env="CUSTOMOP_CHECKS",
        ini="customop_checks",
        parse=_comma_list,
        default=None,
        metavar="LIST",
        help="comma-separated checks run by markers without checks= (default: every check that applies to the op).",
    ),
    Option(
        dest="customop_seed",
        flag="--customop-seed",
        env="CUSTOMOP_SEED",
        ini="customop_seed",
        parse=_non_negative_int,
        default=None,
        metavar="N",
        help="run seed; each item is seeded from it and its node id (default: random, printed in the header).",
    ),
    Option(
        dest="customop_fast_mode_threshold",
        flag="--customop-fast-mode-threshold",
        env="CUSTOMOP_FAST_MODE_THRESHOLD",
        ini="customop_fast_mode_threshold",
        parse=_non_negative_int,
        default=1024,
        metavar="N",
        help="gradcheck uses fast mode when a sample's differentiable inputs and outputs hold more "
        "than N elements in all, slow (full Jacobian) mode otherwise (default: 1024).",
    ),
    Option(
        dest="customop_full_jacobian",
        flag="--customop-full-jacobian",
        env="CUSTOMOP_FULL_JACOBIAN",
        ini="customop_full_jacobian",
        parse=_boolean,
        default=False,
        is_flag=True,
        help="when a fast-mode gradcheck fails, recompute and print the full Jacobians (slow on large inputs; off by default).",
    ),
    Option(
        dest="customop_worker_devices",
        flag="--customop-worker-devices",
        env="CUSTOMOP_WORKER_DEVICES",
        ini="customop_worker_devices",
        parse=parse_worker_devices,
        default=[],
        metavar="auto|off|LIST",
        help="under pytest-xdist, which accelerator each worker runs its items on: auto (worker i on "
        "device i mod N of the N present; the default), off (the current device), or indexes 0,2,3 "
        "(worker i on the (i mod 3)-th).",
    ),
    Option(
        dest="customop_no_gc_freeze",
        flag="--customop-no-gc-freeze",
        env="CUSTOMOP_NO_GC_FREEZE",
        ini="customop_no_gc_freeze",
        parse=_boolean,
        default=False,
        is_flag=True,
        help="do not freeze the objects alive after collection out of Python's garbage collector. By "
        "default, in a process that imported torch, the plugin does (gc.freeze): every full "
        "collection, five of them at the end of each session, then skips torch's millions of objects.",
    ),
    Option(
        dest="customop_strict_edges",
        flag="--customop-strict-edges",
        env="CUSTOMOP_STRICT_EDGES",
        ini="customop_strict_edges",
        parse=_boolean,
        default=False,
        is_flag=True,
        help="edge_shapes fails an item on a suspected edge too (a derived shape the forward accepts but "
        "no relation proves valid); by default such a finding is a note and a warning.",
    ),
)


@dataclass(frozen=True)
class Settings:
    """Resolved settings for one run."""

    devices: Optional[list[str]] = None
    checks: Optional[list[str]] = None
    seed: int = 0
    fast_mode_threshold: int = 1024
    full_jacobian: bool = False
    gc_freeze: bool = True
    #: ``[]`` worker i on device i mod N, None off, else the indexes to spread workers over.
    worker_devices: Optional[list[int]] = field(default_factory=list)
    strict_edges: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)
    #: Where each setting given came from, by option dest: ``--customop-devices``, ``environment
    #: variable CUSTOMOP_DEVICES``, ``ini key customop_devices`` (absent: the default).
    sources: Mapping[str, str] = field(default_factory=dict)

    def source_of(self, dest: str) -> str:
        """``--customop-devices=cpu`` / ``CUSTOMOP_DEVICES=cpu`` / ``ini customop_devices=cpu``: the setting as given."""
        return self.sources.get(dest, dest)


def resolve_settings(cli: Mapping[str, Any], env: Mapping[str, str], ini: Callable[[str], Any]) -> Settings:
    """Resolve every option: command line, then environment, then ini, then the default.

    ``cli`` maps option dests to parsed command-line values (None when absent), ``ini(name)`` returns
    an ini value (empty when absent). Raises :class:`SettingsError` naming the source of a bad value.
    """
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for option in OPTIONS:
        raw, source = cli.get(option.dest), option.flag
        if raw in (None, False):
            raw, source = env.get(option.env), f"environment variable {option.env}"
        if raw in (None, ""):
            try:
                raw, source = ini(option.ini), f"ini key {option.ini}"
            except Exception as exc:  # pytest's "bool"/"int" parsing (a ValueError or UsageError) names no key: say which
                allowed = "; allowed: true or false (also 1/0, yes/no, on/off)" if option.is_flag else ""
                raise SettingsError(f"ini key {option.ini}: {exc}{allowed}") from None
        if raw is None or raw is False or (isinstance(raw, (str, list)) and not raw):  # not `in`: 0 == False
            values[option.dest] = option.default
            continue
        if isinstance(raw, bool):
            values[option.dest] = raw
            continue
        if isinstance(raw, list):  # a TOML list in pyproject.toml
            raw = ",".join(str(part) for part in raw)
        try:
            values[option.dest] = option.parse(str(raw))
        except ValueError as exc:
            raise SettingsError(f"{source}={raw!r}: {exc}") from None
        shown = {option.flag: option.flag, f"environment variable {option.env}": option.env}.get(source, f"ini key {option.ini}")
        sources[option.dest] = f"{shown}={raw}"
    seed = values["customop_seed"]
    return Settings(
        devices=values["customop_devices"] or None,
        checks=values["customop_checks"] or None,
        seed=seed if seed is not None else random.randrange(2**31),
        fast_mode_threshold=values["customop_fast_mode_threshold"],
        full_jacobian=values["customop_full_jacobian"],
        gc_freeze=not values["customop_no_gc_freeze"],
        worker_devices=values["customop_worker_devices"],
        strict_edges=values["customop_strict_edges"],
        sources=sources,
    )
