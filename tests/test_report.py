"""The fleet report (docs/report.md): its numbers, and its page in a real headless Chromium.

The page tests build a state the way users get one (an apply against the emulator on
127.0.0.1, manifests edited after it, a run that died, a drift probe), render the report and
check the page against counts taken straight from the state file.
"""

from __future__ import annotations

import html
import json
import os
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest

from rrpcsync import api
from rrpcsync.manifests.loader import load_manifests
from rrpcsync.model import (
    DesiredDevice,
    DeviceRecord,
    ErrorInfo,
    Probe,
    Status,
    Summary,
    payload_digest,
)
from rrpcsync.planning.render import mermaid_pie, plan_chart
from rrpcsync.report import html as report_html
from rrpcsync.report.html import render_html
from rrpcsync.report.mermaid import compliance_chart, results_chart
from rrpcsync.report.model import (
    COMPLIANCE,
    MANIFEST,
    PRODUCT,
    Category,
    build_report,
    categorize,
    commit_url,
    parse_group_by,
    report_document,
    safe_url,
)
from rrpcsync.state import open_store
from rrpcsync.state.store import RunRecord, State

from . import browser as browsers
from .browser import OpenPage
from .helpers import ROOT, run, write

browser, open_page = browsers.browser, browsers.open_page  # the fixtures of tests/browser.py

T = TypeVar("T")
TOKEN = "emulator-token"
DOCS_SCREENSHOT = ROOT / "docs" / "report.png"
HOSTILE_LABEL = "<b>bold</b><script>alert('label')</script>"
HOSTILE_CODE = "<img src=x onerror=alert('code')>"
HOSTILE_REPLY = "<script>alert('reply')</script>"
HOSTILE_KEY = "P9/<script>alert('orphan')</script>"
HOSTILE_CI = "javascript:alert('ci')"

FLEET = f"""\
apiVersion: rrpcsync/v1
kind: DeviceConfig
metadata:
  name: thermostats
  labels: {{site: shanghai}}
spec:
  productId: P1
  payload: {{method: set_config, params: {{interval: 30}}}}
  devices:
    - t1
    - t2
    - t3
    - name: t4
      labels: {{site: "{HOSTILE_LABEL}"}}
    - t5
---
apiVersion: rrpcsync/v1
kind: DeviceConfig
metadata:
  name: sirens
  labels: {{site: beijing}}
spec:
  productId: P2
  payload: {{method: set_volume, volume: 3}}
  expect: {{}}
  probe: {{payload: {{method: get_config}}, pointer: /config}}
  devices: [s1, s2, s3]
"""
EMULATED = {
    "devices": {
        "P1/t1": {},
        "P1/t2": {},
        "P1/t3": {"offline": True},
        "P1/t4": {"fail_times": 99, "fail_code": HOSTILE_CODE},
        "P1/t5": {},
        "P2/s1": {"reply": '{"code":0}'},
        "P2/s2": {"reply": HOSTILE_REPLY},
        "P2/s3": {"reply": '{"code":0}'},
    }
}
# What each device is once the fixture is done (checked against the state file as well).
EXPECTED = {
    "current": 2,  # t1, s1
    "drifted": 1,  # s3: its probe reported another volume
    "outdated": 1,  # t2: its manifest changed after the apply
    "failed": 3,  # t3 offline, t4 the hostile error code, s2 the hostile reply (ReplyMismatch)
    "pending": 1,  # t5: the run died before its reply
    "never_sent": 1,  # t6: declared after the apply
}


# --------------------------------------------------------------------------- the fleet


def write_report(
    capsys: pytest.CaptureFixture[str],
    folder: Path,
    group_by: Sequence[str] = ("manifest", "product", "label:site"),
) -> Path:
    """`rrpcsync report --html report.html` in `folder` (configs/ and the state)."""
    assert Path.cwd() == folder
    grouping = [arg for spec in group_by for arg in ("--group-by", spec)]
    result = run(capsys, "report", "configs", "--html", "report.html", *grouping)
    assert result.code == 0, result.err
    assert result.err == "wrote report.html\n"
    return folder / "report.html"


class WithRecords:
    """A store holding `extra` records besides the JSON file's: keys the file would refuse."""

    def __init__(self, store: Any, extra: dict[str, DeviceRecord]) -> None:
        self.store, self.extra = store, extra

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def load(self) -> State:
        state: State = self.store.load()
        state.devices.update(self.extra)
        return state


@pytest.fixture
def fleet(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    emulator: Any,
) -> Path:
    """A folder with configs/ and a state holding a device in every category."""
    monkeypatch.setenv("RRPCSYNC_ACCESS_TOKEN", TOKEN)
    monkeypatch.chdir(tmp_path)
    emu = emulator(EMULATED)
    write(tmp_path / "configs" / "fleet.yaml", FLEET)
    args = ("apply", "configs", "--auto-approve", "--endpoint", emu.url, "--retries", "0")
    applied = in_thread(run, capsys, *args)
    assert applied.code == 3, applied.out + applied.err  # three devices failed
    edited = FLEET.replace("    - t2\n", "    - name: t2\n      payload: {params: {interval: 5}}\n")
    write(tmp_path / "configs" / "fleet.yaml", edited.replace("    - t5\n", "    - t5\n    - t6\n"))
    store = open_store(str(tmp_path / "rrpcsync.state.json"))
    state = store.load()
    state.put("P1/t5", state.devices["P1/t5"]._replace(status=Status.PENDING))
    observed = json.dumps({"method": "set_volume", "volume": 9}, separators=(",", ":"))
    state.put("P2/s3", state.devices["P2/s3"]._replace(observed=observed))
    state.put("P9/gone", DeviceRecord(Status.APPLIED, payload_digest("{}"), "{}", manifest="gone"))
    with store.lock("test"):
        store.save(state)
    for number, ci in enumerate(("https://github.com/acme/fleet/actions/runs/7", HOSTILE_CI)):
        store.record_run(run_record(number, ci_url=ci, commit="c0ffee" + "0" * 34))
    return tmp_path


def in_thread(function: Callable[..., T], *args: Any) -> T:
    """Call in a thread of its own: Playwright's sync API keeps an event loop running in the
    test's thread once the browser started, and apply runs its own (asyncio.run)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(function, *args).result()


def run_record(number: int, **fields: Any) -> RunRecord:
    values: dict[str, Any] = {
        "started_at": f"2026-11-{number + 1:02d}T10:00:00Z",
        "finished_at": f"2026-11-{number + 1:02d}T10:02:30Z",
        "command": "apply",
        "ci_url": None,
        "commit": None,
        "sent": 8,
        "applied": 5,
        "failed": 3,
        "failed_by_code": {"FailedOperation.DeviceOffline": 1},
        "counts": {"applied": 5, "failed": 3},
    }
    return RunRecord(**{**values, **fields})


def counts_from_state_file(folder: Path) -> dict[str, int]:
    """Each declared device's category, read straight from the state file's JSON."""
    raw = json.loads((folder / "rrpcsync.state.json").read_text("utf-8"))["devices"]
    counts: Counter[str] = Counter()
    for device in load_manifests([folder / "configs"]).devices:
        record = raw.get(device.key)
        if record is None:
            counts["never_sent"] += 1
        elif record["status"] != "applied":
            counts[record["status"]] += 1
        elif record["payload_sha256"] != device.payload_sha256:
            counts["outdated"] += 1
        elif record.get("observed") and json.loads(record["observed"]) != json.loads(
            device.payload
        ):
            counts["drifted"] += 1
        else:
            counts["current"] += 1
    return {category.value: counts[category.value] for category in COMPLIANCE}


def number(text: str) -> int:
    return int(text.replace(",", "").strip())


# --------------------------------------------------------------------------- in the browser


def test_page_shows_the_states_numbers_without_errors(
    capsys: pytest.CaptureFixture[str], fleet: Path, open_page: OpenPage
) -> None:
    page_file = write_report(capsys, fleet)
    expected = counts_from_state_file(fleet)
    assert expected == EXPECTED
    opened = open_page(page_file)
    page = opened.page
    page.locator("#results tbody tr").first.wait_for()
    assert opened.errors == [] and opened.dialogs == [] and opened.requests == []
    shown = {name: number(page.inner_text(f'[data-metric="{name}"]')) for name in expected}
    assert shown == expected
    assert number(page.inner_text('[data-metric="total"]')) == sum(expected.values())
    assert number(page.inner_text('[data-metric="orphaned"]')) == 1
    assert page.inner_text('[data-metric="compliance"]') == f"{100 * 2 / 9:.1f}%"
    thermostats = page.locator('#group-1 tr[data-group="thermostats"] td.n')
    cells = [number(text.split()[0]) for text in thermostats.all_inner_texts()[:7]]
    assert cells[:7] == [6, 1, 0, 1, 2, 1, 1]  # total, then COMPLIANCE order
    codes = page.locator("table.codes tbody th").all_inner_texts()
    assert sorted(text.removesuffix(" list all") for text in codes) == sorted(
        [HOSTILE_CODE, "FailedOperation.DeviceOffline", "ReplyMismatch"]
    )


def test_search_finds_a_device_and_filters_by_error_code(
    capsys: pytest.CaptureFixture[str], fleet: Path, open_page: OpenPage
) -> None:
    page_file = write_report(capsys, fleet)
    opened = open_page(page_file)
    page = opened.page
    rows = page.locator("#results tbody tr")
    assert rows.count() == 10  # nine declared devices and the orphan
    page.fill("#search", "p2/S2")  # case does not matter
    rows.first.wait_for()
    page.locator("#matches", has_text="1 of 10").wait_for()
    assert rows.count() == 1
    cells = rows.first.locator("td").all_inner_texts()
    assert cells[:4] == ["P2/s2", "failed", "sirens", "ReplyMismatch"]
    assert cells[5] == HOSTILE_REPLY  # the reply kept as evidence, shown as text
    page.fill("#search", "")
    page.select_option("#code", label="FailedOperation.DeviceOffline")
    page.locator("#matches", has_text="1 of 10").wait_for()
    assert rows.first.locator("td").first.inner_text() == "P1/t3"
    page.select_option("#code", value="")
    page.select_option("#status", value="never_sent")
    page.locator("#matches", has_text="1 of 10").wait_for()
    assert rows.first.locator("td").first.inner_text() == "P1/t6"
    assert opened.errors == [] and opened.dialogs == []


def test_hostile_names_codes_and_replies_are_text(fleet: Path, open_page: OpenPage) -> None:
    # The JSON file refuses such a key; another store need not: the page must not care.
    orphan = DeviceRecord(Status.APPLIED, payload_digest("{}"), "{}", manifest=HOSTILE_LABEL)
    store = WithRecords(open_store("rrpcsync.state.json"), {HOSTILE_KEY: orphan})
    groups = [parse_group_by("label:site")]
    page_file = fleet / "report.html"
    page_file.write_text(render_html(api.fleet_report(["configs"], store, group_by=groups)))
    source = page_file.read_text("utf-8")
    for hostile in (HOSTILE_LABEL, HOSTILE_CODE, HOSTILE_REPLY, HOSTILE_KEY):
        assert hostile not in source  # never raw HTML, not even inside the JSON block
    assert HOSTILE_CI not in source and "javascript:" not in source
    opened = open_page(page_file)
    page = opened.page
    page.locator("#results tbody tr").first.wait_for()
    page.locator("details.code summary").first.click()
    text = page.inner_text("body")
    for hostile in (HOSTILE_LABEL, HOSTILE_CODE, HOSTILE_REPLY, HOSTILE_KEY):
        assert hostile in text
    assert page.locator("img").count() == 0  # no element came out of a string
    assert page.locator("b", has_text="bold").count() == 0
    assert page.locator("script").count() == 2  # the data block and the page's own script
    assert opened.dialogs == [] and opened.errors == []
    links = [link.get_attribute("href") or "" for link in page.locator("#history a").all()]
    assert links and all(link.startswith("https://github.com/acme/fleet/") for link in links)


def test_static_parts_work_without_javascript(
    capsys: pytest.CaptureFixture[str], fleet: Path, open_page: OpenPage
) -> None:
    page_file = write_report(capsys, fleet)
    opened = open_page(page_file, javascript=False)
    page = opened.page
    shown = {name: number(page.inner_text(f'[data-metric="{name}"]')) for name in EXPECTED}
    assert shown == counts_from_state_file(fleet)
    assert page.locator("noscript").count() == 1
    assert not page.locator("#explorer").is_visible()
    assert page.locator("#group-3 tbody tr").count() == 3  # beijing, shanghai, the hostile label
    offline = page.locator('details.code[data-code="FailedOperation.DeviceOffline"]')
    assert not offline.locator("table").is_visible()
    offline.locator("summary").click()  # <details> opens without a script
    assert offline.locator("tbody td").first.inner_text() == "P1/t3"
    runs = open_store("rrpcsync.state.json").runs()
    assert len(runs) == 3  # the apply's own, and the two the fixture recorded
    assert page.locator("svg.history g.run").count() == 3
    applied = page.locator("table.runs tbody tr").last.locator("td").all_inner_texts()
    assert applied[1:5] == ["apply", "8", "5", "3"]  # the fixture's apply: 8 sent, 3 failed
    assert opened.errors == []


def test_tables_sort_and_long_ones_expand(tmp_path: Path, open_page: OpenPage) -> None:
    groups = report_html.GROUP_ROWS + 5
    desired = [device(f"P{n:03d}/d1", f"m{n:03d}") for n in range(groups)]
    state = State("mem", "lineage")
    for n, item in enumerate(desired):
        if n % 3 == 0:
            state.devices[item.key] = failed_record("FailedOperation.DeviceOffline")
    page_file = tmp_path / "report.html"
    page_file.write_text(render_html(build_report(desired, state, group_by=[MANIFEST])))
    opened = open_page(page_file)
    page = opened.page
    body = page.locator("#group-1 tbody tr")
    assert body.count() == groups
    assert page.locator("#group-1 tbody tr:visible").count() == report_html.GROUP_ROWS
    page.locator("#group-1 th", has_text="failed").locator("button").click()
    first = page.locator("#group-1 tbody tr:visible th").first.inner_text()
    assert first == "m000"  # a failed one first: numbers sort largest first
    failed_first = page.locator("#group-1 tbody tr:visible td:nth-child(7)").all_inner_texts()
    assert [number(text.split()[0]) for text in failed_first[:18]] == [1] * 18
    page.locator("label.more").first.click()  # "Show all" (a checkbox: no script needed)
    assert page.locator("#group-1 tbody tr:visible").count() == groups
    assert opened.errors == []


def test_a_100000_device_fleet_stays_small_and_searchable(
    tmp_path: Path, open_page: OpenPage
) -> None:
    desired, state = big_fleet(100_000)
    report = build_report(desired, state, [run_record(n) for n in range(300)])
    text = render_html(report)
    size = len(text.encode("utf-8"))
    assert size <= 5_000_000, f"{size:,} bytes"
    page_file = tmp_path / "big.html"
    page_file.write_text(text, encoding="utf-8")
    opened = open_page(page_file)
    page = opened.page
    page.locator("#results tbody tr").first.wait_for()
    elements = page.locator("*").count()
    assert elements < 15_000, elements  # summarised: not a row per device
    assert number(page.inner_text('[data-metric="failed"]')) == report.totals.failed > 10_000
    wanted = desired[77_042].key
    page.fill("#search", wanted.split("/")[1])
    page.locator("#matches", has_text="1 of 100,000").wait_for()
    cells = page.locator("#results tbody tr").first.locator("td").all_inner_texts()
    assert cells[0] == wanted
    assert opened.errors == []


def test_screenshot_for_the_docs(
    capsys: pytest.CaptureFixture[str], fleet: Path, open_page: OpenPage
) -> None:
    """docs/report.md shows this screenshot: `RRPCSYNC_UPDATE_DOCS=1` writes it there."""
    page_file = write_report(capsys, fleet, group_by=["manifest", "product"])
    opened = open_page(page_file, width=1000)
    page = opened.page
    page.locator("#results tbody tr").first.wait_for()
    shot = page.screenshot(clip={"x": 0, "y": 0, "width": 1000, "height": 720})
    assert shot.startswith(b"\x89PNG\r\n\x1a\n") and len(shot) < 250_000
    if os.environ.get("RRPCSYNC_UPDATE_DOCS") == "1":
        DOCS_SCREENSHOT.write_bytes(shot)
    assert DOCS_SCREENSHOT.exists(), "run with RRPCSYNC_UPDATE_DOCS=1 to write docs/report.png"


# --------------------------------------------------------------------------- the command


def test_json_form_has_the_states_numbers_and_nothing_is_written(
    capsys: pytest.CaptureFixture[str], fleet: Path
) -> None:
    state_file = fleet / "rrpcsync.state.json"
    before = {path.name: path.read_bytes() for path in fleet.glob("rrpcsync.state.json*")}
    result = run(capsys, "report", "--format", "json", "--group-by", "label:site")
    assert result.code == 0, result.err
    document = json.loads(result.out)
    totals = document["totals"]
    expected = counts_from_state_file(fleet)
    assert {name: totals[name] for name in expected} == expected
    assert (totals["total"], totals["orphaned"], totals["deferred"]) == (9, 1, 0)
    assert totals["percent"]["failed"] == round(100 * 3 / 9, 1)
    assert document["windows"] == {"checked": True, "closed": {}}
    sites = {row["value"]: row["total"] for row in document["groups"]["label:site"]}
    assert sites == {"beijing": 3, "shanghai": 5, HOSTILE_LABEL: 1}
    failed = {item["key"]: item["code"] for item in document["failures"]}
    assert failed == {
        "P1/t3": "FailedOperation.DeviceOffline",
        "P1/t4": HOSTILE_CODE,
        "P2/s2": "ReplyMismatch",
    }
    assert next(f for f in document["failures"] if f["key"] == "P2/s2")["reply"] == HOSTILE_REPLY
    assert [r["ci_url"] for r in document["runs"]][1:] == [
        "https://github.com/acme/fleet/actions/runs/7",
        None,  # javascript: is no link
    ]
    assert document["state"]["serial"] == json.loads(state_file.read_text("utf-8"))["serial"]
    after = {path.name: path.read_bytes() for path in fleet.glob("rrpcsync.state.json*")}
    assert after == before  # report reads; it writes no state, journal, lock or history


def test_text_and_markdown_forms_and_the_step_summary(
    capsys: pytest.CaptureFixture[str], fleet: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = run(capsys, "report")
    assert text.code == 0
    assert text.out_lines[0] == (
        "Compliance: 22.2% of 9 declared device(s) are applied and current."
    )
    assert "  failed             3   33.3%" in text.out_lines
    assert (
        "  thermostats: 16.7% current; 1 current, 1 outdated, 2 failed, 1 pending, "
        "1 never sent" in text.out_lines
    )
    summary = fleet / "summary.md"
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    markdown = run(capsys, "report", "--format", "markdown")
    assert markdown.code == 0
    assert summary.read_text("utf-8").strip() == markdown.out.strip()
    lines = markdown.out_lines
    assert lines[0] == "<!-- rrpcsync-report -->"
    assert (
        "| **all** | 9 | 2 (22.2%) | 1 (11.1%) | 1 (11.1%) | 3 (33.3%) | 1 (11.1%) "
        "| 1 (11.1%) | 0 |" in lines
    )
    chart = lines[lines.index("```mermaid") : lines.index("```mermaid") + 9]
    assert chart[1:3] == ["pie showData", "    title Devices by status"]
    assert '    "failed" : 3' in chart and '    "pending" : 1' in chart
    assert "| `&lt;img src=x onerror=alert('code')&gt;` | 1 |" in lines
    assert HOSTILE_CODE not in markdown.out


def test_bad_input_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str], fleet: Path) -> None:
    bad_group = run(capsys, "report", "--group-by", "site")
    assert bad_group.code == 1
    assert "expected manifest, product or label:KEY, not 'site'" in bad_group.err
    write(fleet / "configs" / "broken.yaml", "apiVersion: rrpcsync/v1\nkind: Nope\n")
    broken = run(capsys, "report", "--html", "r.html")
    assert broken.code == 1
    assert "configs/broken.yaml:2:7: error: $.kind: must be 'DeviceConfig'" in broken.err
    assert not (fleet / "r.html").exists()
    (fleet / "configs" / "broken.yaml").unlink()
    (fleet / "other.json").write_text("{not json", encoding="utf-8")
    corrupt = run(capsys, "report", "--state", "other.json")
    assert corrupt.code == 1
    assert corrupt.err.startswith("error: ") and "other.json" in corrupt.err
    assert len(corrupt.err.splitlines()) == 1 and "Traceback" not in corrupt.err


def test_apply_step_summary_has_a_chart_of_the_results(
    capsys: pytest.CaptureFixture[str], fleet: Path, monkeypatch: pytest.MonkeyPatch, emulator: Any
) -> None:
    summary = fleet / "summary.md"
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    emu = emulator({"devices": {**EMULATED["devices"], "P1/t4": {}, "P1/t6": {}}})
    args = ("apply", "configs", "--auto-approve", "--endpoint", emu.url, "--retries", "0")
    assert in_thread(run, capsys, *args).code == 3  # P1/t3 and P2/s2 fail again
    lines = summary.read_text("utf-8").splitlines()
    start = lines.index("```mermaid")
    chart = lines[start : lines.index("```", start) + 1]
    assert chart[:3] == ["```mermaid", "pie showData", "    title Apply"]
    assert sorted(chart[3:-1]) == sorted(
        [
            '    "applied" : 4',  # t2 (outdated), t4, t5 (pending), t6 (never sent)
            '    "failed: FailedOperation.DeviceOffline" : 1',
            '    "failed: ReplyMismatch" : 1',
        ]
    )
    assert chart[-1] == "```"


def test_mermaid_pies_are_safe_and_compact() -> None:
    slices = [("ok", 3), ("none", 0), ('bad"`#;\ncode', 2)]
    assert mermaid_pie('A "title"\n', slices) == [
        "```mermaid",
        "pie showData",
        "    title A title",
        '    "ok" : 3',
        '    "bad code" : 2',
        "```",
    ]
    assert mermaid_pie("nothing", [("a", 0)]) == []
    many = mermaid_pie("many", [(f"code{n}", 100 - n) for n in range(12)])
    assert (
        len(many) == 3 + 8 + 1 and many[-2] == f'    "other" : {sum(100 - n for n in range(7, 12))}'
    )
    assert results_chart(5, {"B": 1, "A": 1, "C": 3}, 0)[3:-1] == [
        '    "applied" : 5',
        '    "failed: C" : 3',
        '    "failed: A" : 1',
        '    "failed: B" : 1',
    ]


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_every_store_gives_the_same_report(
    capsys: pytest.CaptureFixture[str], fleet: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    url = "sqlite:///state.db" if kind == "sqlite" else str(request.getfixturevalue("pg_url"))
    migrated = run(capsys, "state", "migrate", "--state", "rrpcsync.state.json", "--to", url)
    assert migrated.code == 0, migrated.err
    from_file = json.loads(run(capsys, "report", "--format", "json").out)
    result = run(capsys, "report", "--format", "json", "--state", url, "--html", "store.html")
    assert result.code == 0, result.err
    from_store = json.loads(result.out)
    assert from_store["state"]["location"] != from_file["state"]["location"]
    for document in (from_file, from_store):
        del document["generated_at"], document["state"]["location"]
    assert from_store == from_file  # the same numbers, failures and run history
    if kind == "postgresql":  # the page names the database, never its password
        password = urlsplit(url).password or ""
        page = (fleet / "store.html").read_text("utf-8")
        assert password and password not in page and password not in result.out + result.err


def test_devices_waiting_for_a_closed_window_count_as_deferred(
    capsys: pytest.CaptureFixture[str], fleet: Path
) -> None:
    now = datetime.now(timezone.utc)
    opens, closes = (now + timedelta(hours=2)).strftime("%H:%M"), (now + timedelta(hours=3))
    window = f'{{start: "{opens}", end: "{closes:%H:%M}", timezone: UTC}}'
    text = (fleet / "configs" / "fleet.yaml").read_text("utf-8")
    sirens = text.index("  expect: {}")  # the second manifest: sirens waits for its window
    write(
        fleet / "configs" / "fleet.yaml", f"{text[:sirens]}  windows: [{window}]\n{text[sirens:]}"
    )
    document = json.loads(run(capsys, "report", "--format", "json").out)
    opening = document["windows"]["closed"]["sirens"]
    assert list(document["windows"]["closed"]) == ["sirens"]
    assert opening.startswith((now + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M"))
    by_manifest = {row["value"]: row for row in document["groups"]["manifest"]}
    assert by_manifest["sirens"]["deferred"] == 2  # s2 failed, s3 drifted; s1 is current
    assert by_manifest["thermostats"]["deferred"] == 0
    assert document["totals"]["deferred"] == 2
    assert {f["key"]: f["deferred"] for f in document["failures"]}["P2/s2"] is True
    text_form = run(capsys, "report")
    assert (
        "  deferred           2   22.2%  (1 manifest(s) outside their maintenance windows "
        "now)" in text_form.out_lines
    )
    page = write_report(capsys, fleet).read_text("utf-8")
    assert f"<b>sirens</b> (opens <time>{opening}</time>)" in page
    assert 'data-metric="deferred">2<' in page


MERMAID_JS = os.environ.get("RRPCSYNC_MERMAID_JS")  # .ci/run installs mermaid from npm


@pytest.mark.skipif(not MERMAID_JS, reason="RRPCSYNC_MERMAID_JS (mermaid.min.js) is not set")
def test_charts_parse_and_draw_with_mermaid(browser: Any) -> None:
    """The charts GitHub draws, checked by mermaid's own parser and renderer in Chromium."""
    hostile = {'a"b`c#d;e\nf': 2, "<script>alert('x')</script>": 1, "ok": 4}
    totals = build_report([device("P/d1"), device("P/d2")], State("mem", "L")).totals
    charts = [
        plan_chart(Summary(create=4, update=1, retry=1, drift=2, orphan=1, noop=9)),
        compliance_chart(totals),
        results_chart(10, hostile, 3),
        mermaid_pie("many", [(f"code {n}", n + 1) for n in range(12)]),
    ]
    page = browser.new_page()
    try:
        page.set_content("<!doctype html><body></body>")
        page.add_script_tag(path=MERMAID_JS)
        for number, chart in enumerate(charts):
            body = "\n".join(line for line in chart if line and not line.startswith("```"))
            drawn = page.evaluate(
                """async ([id, text]) => {
                    mermaid.initialize({ startOnLoad: false });
                    try { await mermaid.parse(text); } catch (e) { return "error: " + e.message; }
                    const { svg } = await mermaid.render(id, text);
                    return svg;
                }""",
                [f"chart{number}", body],
            )
            assert drawn.startswith("<svg"), (body, drawn[:300])
            for line in (line for line in chart if line.startswith('    "')):
                label = line.split('"')[1]
                assert html.escape(label, quote=False) in drawn or label in drawn, label
    finally:
        page.close()


# --------------------------------------------------------------------------- the numbers


def device(
    key: str,
    manifest: str = "m1",
    payload: str = '{"v":1}',
    labels: dict[str, str] | None = None,
    probe: Probe | None = None,
    template: str | None = None,
) -> DesiredDevice:
    product, name = key.split("/")
    return DesiredDevice(
        key, product, name, manifest, payload, f"sha-{payload}", "m.yaml", 1, labels or {},
        template=template, probe=probe,
    )  # fmt: skip


def applied(payload: str = '{"v":1}', observed: str | None = None) -> DeviceRecord:
    return DeviceRecord(Status.APPLIED, f"sha-{payload}", payload, observed=observed)


def failed_record(code: str, message: str = "no", attempts: int = 2) -> DeviceRecord:
    error = ErrorInfo(code, message, "2026-11-28T12:00:00Z")
    return DeviceRecord(Status.FAILED, attempts=attempts, last_error=error)


PROBE = Probe('{"method":"get"}', "", ("/uptime",))


@pytest.mark.parametrize(
    ("record", "wanted", "category"),
    [
        (None, device("P/d"), Category.NEVER_SENT),
        (DeviceRecord(Status.PENDING), device("P/d"), Category.PENDING),
        (failed_record("X"), device("P/d"), Category.FAILED),
        (applied('{"v":0}'), device("P/d"), Category.OUTDATED),
        (applied(), device("P/d"), Category.CURRENT),
        (applied(observed='{"v":2}'), device("P/d", probe=PROBE), Category.DRIFTED),
        (applied(observed='{"v":1}'), device("P/d", probe=PROBE), Category.CURRENT),
        (applied(observed='{"uptime":9,"v":1}'), device("P/d", probe=PROBE), Category.CURRENT),
        (applied(observed='{"uptime":9,"v":1}'), device("P/d"), Category.DRIFTED),
        (applied(observed='"v=1"', payload="v=1"), device("P/d", payload="v=1"), Category.CURRENT),
        (
            # observed configs are stored masked: compared with the masked desired payload
            applied(observed='{"token":"(sensitive)"}', payload='{"token":"s3cret"}'),
            device("P/d", payload='{"token":"s3cret"}', template='{"token":"${env:T}"}'),
            Category.CURRENT,
        ),
    ],
)
def test_categories(record: DeviceRecord | None, wanted: DesiredDevice, category: Category) -> None:
    assert categorize(wanted, record) is category


def test_counts_per_group_add_up_and_deferred_counts_on_top() -> None:
    desired = [
        device("A/1", "m1", labels={"site": "x"}),
        device("A/2", "m1", labels={"site": "y"}),
        device("B/1", "m2", labels={"site": "x"}),
        device("B/2", "m2"),
    ]
    state = State("mem", "L", serial=4)
    state.devices.update(
        {
            "A/1": applied(),
            "A/2": failed_record("Offline"),
            "B/1": failed_record("Busy"),
            "Z/9": applied(),  # orphaned
        }
    )
    report = build_report(
        desired,
        state,
        group_by=[MANIFEST, PRODUCT, parse_group_by("label:site")],
        deferred_manifests={"m2": "2026-12-03T02:00:00Z"},
    )
    totals = report.totals
    assert (totals.total, totals.current, totals.failed, totals.never_sent) == (4, 1, 2, 1)
    assert (totals.deferred, report.orphaned, report.windows_known) == (2, 1, True)
    assert report.closed_windows == {"m2": "2026-12-03T02:00:00Z"}
    assert totals.failed_by_code == {"Busy": 1, "Offline": 1}
    assert totals.compliance == 25.0
    by_site = {row.value: row.counts for row in report.groupings[2].rows}
    assert list(by_site) == ["x", "y", None]  # devices without the label last
    assert (by_site["x"].current, by_site["x"].failed, by_site["x"].deferred) == (1, 1, 1)
    assert [row.value for row in report.groupings[1].rows] == ["A", "B"]
    assert [line.key for line in report.failures] == ["B/1", "A/2"]
    document = report_document(report)
    assert document["totals"]["orphaned"] == 1
    assert document["totals"]["percent"]["failed"] == 50.0
    assert document["groups"]["label:site"][2]["value"] is None
    assert document["failures"][0] == {
        "key": "B/1",
        "manifest": "m2",
        "code": "Busy",
        "message": "no",
        "at": "2026-11-28T12:00:00Z",
        "attempts": 2,
        "reply": None,
        "deferred": True,
    }
    without_windows = build_report(desired, state)
    assert (without_windows.totals.deferred, without_windows.windows_known) == (0, False)


def test_group_by_specs() -> None:
    assert parse_group_by("label:site").name == "label:site"
    assert parse_group_by("product") is not None
    for bad in ("label:", "site", "labels:x", ""):
        with pytest.raises(ValueError, match="expected manifest, product or label:KEY"):
            parse_group_by(bad)


def test_runs_get_durations_and_only_safe_links() -> None:
    state = State("mem", "L")
    runs = [
        run_record(0, ci_url="https://github.com/o/r/actions/runs/12", commit="ab" * 20),
        run_record(1, ci_url="https://gitlab.com/g/sub/p/-/pipelines/3", commit="abcdef1"),
        run_record(2, ci_url="javascript:alert(1)", commit="<b>"),
        run_record(3, started_at="garbage"),
    ]
    points = build_report([], state, runs).runs
    assert points[0].duration == 150.0
    assert points[0].commit_url == "https://github.com/o/r/commit/" + "ab" * 20
    assert points[1].commit_url == "https://gitlab.com/g/sub/p/-/commit/abcdef1"
    assert (points[2].ci_url, points[2].commit_url, points[2].commit) == (None, None, "<b>")
    assert points[3].duration is None
    assert safe_url('https://x.test/"onmouseover=') is None
    assert safe_url("data:text/html,hi") is None
    assert commit_url("https://ci.example/run/1", "abcdef1") is None


def test_page_is_self_contained() -> None:
    state = State("mem", "L")
    state.devices["P/d"] = failed_record("Code")
    text = render_html(build_report([device("P/d")], state, [run_record(0)]))
    assert "<link" not in text and " src=" not in text and "@import" not in text
    attribute = text.split('http-equiv="Content-Security-Policy" content="')[1].split('"')[0]
    policy = html.unescape(attribute)
    assert policy.startswith("default-src 'none';")
    script = text.rsplit("<script>", 1)[1].split("</script>")[0]
    assert report_html.csp_hash(script) in policy


def test_messages_beyond_the_budget_are_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report_html, "MESSAGE_BUDGET", 25)
    state = State("mem", "L")
    desired = [device(f"P/d{n}") for n in range(4)]
    for n, item in enumerate(desired):
        state.devices[item.key] = failed_record("Code", message=f"message number {n}")
    data = report_html.devices_data(build_report(desired, state).devices)
    assert data["messages"] == ["message number 0"]
    assert [len(row) for row in data["failed"]] == [7, 6, 6, 6]


def big_fleet(count: int) -> tuple[list[DesiredDevice], State]:
    """`count` devices in 100 manifests; about 12% failed (with their own messages), 5%
    outdated, 3% pending, 2% never sent."""
    desired, state = [], State("big.state.json", "lineage")
    for n in range(count):
        manifest = n * 100 // count
        key = f"P{manifest % 50:03d}/dev-{n // 1000:04d}-{n % 1000:04d}"
        item = device(key, f"fleet-{manifest:03d}", labels={"site": f"site-{n % 17}"})
        desired.append(item)
        roll = n * 7919 % 100
        if roll < 12:
            message = f"{key} did not answer within 5 s"
            state.devices[key] = failed_record(f"FailedOperation.Code{n % 7}", message, 3)
        elif roll < 17:
            state.devices[key] = applied('{"v":0}')
        elif roll < 20:
            state.devices[key] = DeviceRecord(Status.PENDING)
        elif roll < 98:
            state.devices[key] = applied()
    return desired, state
