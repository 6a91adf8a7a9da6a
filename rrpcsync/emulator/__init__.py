"""A local stand-in for the Tencent Cloud IoT Explorer app API `AppPublishRRPCMessage`.

A real HTTP server on 127.0.0.1 for tests, `rrpcsync demo` and benchmarks. It imports nothing
from the rest of rrpcsync: it plays the cloud, so it must not share the client's code.

    from rrpcsync.emulator import Emulator, load_fleet

    with Emulator(load_fleet("examples/emulator/fleet.yaml")) as emu:
        ...  # POST AppPublishRRPCMessage bodies to emu.url; inspect emu.stats()
"""

from __future__ import annotations

from .core import Answer, EmulatorCore
from .fleet import (
    DEFAULT_TOKEN,
    Behaviour,
    EmulatorError,
    Faults,
    Fleet,
    FleetError,
    ProductRange,
    load_fleet,
)
from .protocol import ACTION, PAYLOAD_LIMIT
from .server import Emulator, FleetSource, bind, build_app, main_blocking, run_forever, serve

__all__ = [
    "ACTION",
    "DEFAULT_TOKEN",
    "PAYLOAD_LIMIT",
    "Answer",
    "Behaviour",
    "Emulator",
    "EmulatorCore",
    "EmulatorError",
    "Faults",
    "Fleet",
    "FleetError",
    "FleetSource",
    "ProductRange",
    "bind",
    "build_app",
    "load_fleet",
    "main_blocking",
    "run_forever",
    "serve",
]
