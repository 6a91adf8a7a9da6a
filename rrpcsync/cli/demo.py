"""`rrpcsync demo`: the whole loop, offline, against the emulator on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

RunCli = Callable[[Sequence[str]], int]
Say = Callable[[str], None]

# The emulator plays the login too: the demo logs in with these (offline, not secrets).
DEMO_CREDENTIALS = {
    "RRPCSYNC_APP_KEY": "demo-app-key",
    "RRPCSYNC_APP_SECRET": "demo-app-secret",
    "RRPCSYNC_USER": "demo@example.com",
    "RRPCSYNC_PASSWORD": "demo-password",
}
DEMO_FLEET: dict[str, Any] = {
    "token": None,  # no fixed token: only the one the demo's login obtains
    "auto_devices": True,
    "default": {"reply": {"code": 0, "msg": "config applied"}, "latency": 0.05},
    "login": {
        "app_key": DEMO_CREDENTIALS["RRPCSYNC_APP_KEY"],
        "app_secret": DEMO_CREDENTIALS["RRPCSYNC_APP_SECRET"],
        "token_lifetime": 3600,
        "users": [
            {
                "email": DEMO_CREDENTIALS["RRPCSYNC_USER"],
                "password": DEMO_CREDENTIALS["RRPCSYNC_PASSWORD"],
            }
        ],
    },
}
# Variables the demo sets (None: removes) while it runs, and restores afterwards.
DEMO_UNSET = ("RRPCSYNC_ACCESS_TOKEN", "RRPCSYNC_SITE")
EDITED_FILE = Path("shanghai") / "thermostats.yaml"
INVENTORY = Path("inventory") / "meters.csv"
EXPLAINED = "MTR01/meter-0005"
# The meters accept changes 02:00-05:00 Asia/Shanghai only; the demo runs at any hour.
ANY_HOUR = "--ignore-windows"


def example_configs(name: str = "configs") -> Path:
    """An example folder (configs, fleet): packaged in the wheel, or the source checkout's."""
    packaged = Path(str(resources.files("rrpcsync"))) / "_examples" / name
    if packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parents[2] / "examples" / name
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError("the example manifests are not installed with this rrpcsync")


@contextmanager
def demo_environment(endpoint: str, login_endpoint: str) -> Iterator[None]:
    wanted: dict[str, str | None] = {
        "RRPCSYNC_ENDPOINT": endpoint,
        "RRPCSYNC_LOGIN_ENDPOINT": login_endpoint,
        **DEMO_CREDENTIALS,
        **dict.fromkeys(DEMO_UNSET),
    }
    saved = {key: os.environ.get(key) for key in wanted}
    try:
        _set_environment(wanted)
        yield
    finally:
        _set_environment(saved)


def _set_environment(values: dict[str, str | None]) -> None:
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@contextmanager
def working_directory(path: Path) -> Iterator[None]:
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def run_demo(run: RunCli, say: Say, keep: bool = False) -> int:
    from rrpcsync.emulator import Emulator

    workdir = Path(tempfile.mkdtemp(prefix="rrpcsync-demo-"))
    configs, fleet = workdir / "configs", workdir / "fleet"
    shutil.copytree(example_configs(), configs)
    shutil.copytree(example_configs("fleet"), fleet)
    try:
        with Emulator(DEMO_FLEET, host="127.0.0.1", port=0) as emulator:
            say(f"# emulator listening on {emulator.url} (the cloud API, offline)")
            say(f"# working copies of examples/configs and examples/fleet in {workdir}")
            with demo_environment(emulator.url, emulator.login_url), working_directory(workdir):
                # relative paths: the plan's file:line read as in a checkout
                return _steps(run, say, emulator, ("configs", "fleet"), "rrpcsync.state.json")
    finally:
        if keep:
            say(f"# kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _requests(emulator: Any) -> int:
    return int(emulator.stats()["requests_total"])


def _steps(run: RunCli, say: Say, emulator: Any, paths: tuple[str, str], state: str) -> int:
    common = [*paths, "--state", state]
    configs, fleet = (Path(path) for path in paths)
    say("\n$ rrpcsync login      # AppGetToken with the app's keys and a user's password")
    if (code := run(["login"])) != 0:
        return code
    say("\n$ rrpcsync validate configs/ fleet/")
    if (code := run(["validate", *paths])) != 0:
        return code
    say("\n$ rrpcsync plan configs/ fleet/")
    say("# fleet/ is built from an inventory (fleet/inventory/meters.csv) with overrides; its")
    say("# window takes changes 02:00-05:00 Asia/Shanghai only: outside it they are deferred")
    run(["plan", *common])
    say(f"\n$ rrpcsync plan fleet/ --explain {EXPLAINED}   # which layer set each value")
    run(["plan", str(fleet), "--state", state, "--explain", EXPLAINED])
    say(f"\n$ rrpcsync apply configs/ fleet/ --auto-approve {ANY_HOUR}")
    say(f"# {ANY_HOUR}: the demo sends at any hour, inside the meters' window or not")
    if (code := run(["apply", *common, "--auto-approve", ANY_HOUR, "--rate", "50"])) != 0:
        return code
    first = _requests(emulator)
    say(f"# the emulator received {first} request(s): one per device")
    say(f"\n$ rrpcsync apply configs/ fleet/ --auto-approve {ANY_HOUR}   # again: no change")
    run(["apply", *common, "--auto-approve", ANY_HOUR])
    say(f"# requests since the first apply: {_requests(emulator) - first}")
    _edit_one_device(configs / EDITED_FILE)
    say(f"\n# edit configs/{EDITED_FILE}: dev-002 now reports every 5 s instead of 10 s")
    edited = _apply_edit(run, say, emulator, common)
    _move_meter(fleet / INVENTORY)
    say(f"\n# edit fleet/{INVENTORY}: meter-0002 moves to production line 1, where an")
    say("# override sets real-time uploads")
    moved = _apply_edit(run, say, emulator, common)
    say("\n$ rrpcsync state list")
    run(["state", "list", "--state", state])
    return max(edited, moved)


def _apply_edit(run: RunCli, say: Say, emulator: Any, common: list[str]) -> int:
    """Plan and apply after an edit; anything but exactly one message is a failure."""
    say("$ rrpcsync plan configs/ fleet/")
    run(["plan", *common])
    before = _requests(emulator)
    say(f"\n$ rrpcsync apply configs/ fleet/ --auto-approve {ANY_HOUR}")
    code = run(["apply", *common, "--auto-approve", ANY_HOUR])
    sent = _requests(emulator) - before
    say(f"# the edit sent exactly {sent} message(s)")
    return code if sent == 1 else 1


def _edit_one_device(path: Path) -> None:
    _replace_once(path, "params: {interval: 10}", "params: {interval: 5}")


def _move_meter(path: Path) -> None:
    _replace_once(path, "meter-0002,,3,rev-b", "meter-0002,1,3,rev-b")


def _replace_once(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    edited = text.replace(old, new, 1)
    if edited == text:
        raise RuntimeError(f"the demo could not find {old!r} in {path}")
    path.write_text(edited, encoding="utf-8")
