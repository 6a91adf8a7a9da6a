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


def example_configs() -> Path:
    """The example fleet: packaged in the wheel, or the source checkout's examples/configs."""
    packaged = Path(str(resources.files("rrpcsync"))) / "_examples" / "configs"
    if packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parents[2] / "examples" / "configs"
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


def run_demo(run: RunCli, say: Say, keep: bool = False) -> int:
    from rrpcsync.emulator import Emulator

    workdir = Path(tempfile.mkdtemp(prefix="rrpcsync-demo-"))
    configs = workdir / "configs"
    shutil.copytree(example_configs(), configs)
    state = str(workdir / "rrpcsync.state.json")
    try:
        with Emulator(DEMO_FLEET, host="127.0.0.1", port=0) as emulator:
            say(f"# emulator listening on {emulator.url} (the cloud API, offline)")
            say(f"# working copy of examples/configs in {configs}")
            with demo_environment(emulator.url, emulator.login_url):
                return _steps(run, say, emulator, str(configs), state)
    finally:
        if keep:
            say(f"# kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _requests(emulator: Any) -> int:
    return int(emulator.stats()["requests_total"])


def _steps(run: RunCli, say: Say, emulator: Any, configs: str, state: str) -> int:
    common = ["--state", state]
    say("\n$ rrpcsync login      # AppGetToken with the app's keys and a user's password")
    if (code := run(["login"])) != 0:
        return code
    say("\n$ rrpcsync validate configs/")
    if (code := run(["validate", configs])) != 0:
        return code
    say("\n$ rrpcsync plan configs/")
    run(["plan", configs, *common])
    say("\n$ rrpcsync apply configs/ --auto-approve")
    if (code := run(["apply", configs, *common, "--auto-approve", "--rate", "50"])) != 0:
        return code
    first = _requests(emulator)
    say(f"# the emulator received {first} request(s): one per device")
    say("\n$ rrpcsync apply configs/ --auto-approve      # again: nothing changed")
    run(["apply", configs, *common, "--auto-approve"])
    say(f"# requests since the first apply: {_requests(emulator) - first}")
    _edit_one_device(Path(configs) / EDITED_FILE)
    say(f"\n# edit {EDITED_FILE}: dev-002 now reports every 5 s instead of 10 s")
    say("$ rrpcsync plan configs/")
    run(["plan", configs, *common])
    before = _requests(emulator)
    say("\n$ rrpcsync apply configs/ --auto-approve")
    code = run(["apply", configs, *common, "--auto-approve"])
    sent = _requests(emulator) - before
    say(f"# the edit sent exactly {sent} message(s)")
    say("\n$ rrpcsync state list")
    run(["state", "list", *common])
    return code if sent == 1 else 1


def _edit_one_device(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    edited = text.replace("params: {interval: 10}", "params: {interval: 5}", 1)
    if edited == text:
        raise RuntimeError(f"the demo could not find dev-002's override in {path}")
    path.write_text(edited, encoding="utf-8")
