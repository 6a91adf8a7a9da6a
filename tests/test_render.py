"""Pure renderers: payload diffs, plan text, the markdown size limit, annotations."""

from __future__ import annotations

import hashlib
import re

from rrpcsync.errors import Diagnostic
from rrpcsync.model import Action, Change, Plan, Summary
from rrpcsync.planning import render
from rrpcsync.planning.planner import make_plan
from rrpcsync.planning.render import MARKDOWN_LIMIT, MARKDOWN_MARKER, payload_diff, plan_markdown

from .test_plan import applied, device


def test_payload_diff_lists_only_changed_keys() -> None:
    before = '{"method":"set","params":{"interval":30,"unit":"C","display":"温度"}}'
    after = '{"method":"set","params":{"interval":10,"unit":"C","mode":"eco"}}'
    assert payload_diff(before, after) == [
        'params.display: "温度" → (removed)',
        "params.interval: 30 → 10",
        'params.mode: (absent) → "eco"',
    ]


def test_payload_diff_of_raw_strings_shows_both() -> None:
    assert payload_diff("VOLUME=7", "VOLUME=3") == ["VOLUME=7 → VOLUME=3"]


def test_payload_diff_is_capped() -> None:
    before = "{" + ",".join(f'"k{i}":1' for i in range(30)) + "}"
    after = "{" + ",".join(f'"k{i}":2' for i in range(30)) + "}"
    lines = payload_diff(before, after, limit=5)
    assert len(lines) == 6
    assert lines[-1] == "… and 25 more changed keys"


def test_plan_text_groups_by_manifest_and_counts() -> None:
    plan = make_plan(
        [device("P/a", manifest="m2"), device("P/b", '{"a":2}', manifest="m1")],
        {"P/b": applied('{"a":1}'), "P/c": applied("x")},
        lineage="L",
        serial=3,
    )
    lines = list(render.plan_text(plan))
    assert lines == [
        "m1:",
        "  ~ P/b  (f.yaml:3)",
        "      a: 1 → 2",
        "  - P/c  no longer declared; forgotten with --prune, nothing is sent",
        "m2:",
        "  + P/a  (f.yaml:3)",
        '      {"a":1}',
        "",
        "Plan: 1 to create, 1 to update, 0 to retry, 1 orphaned, 0 unchanged.",
        "Orphaned devices are only reported; `apply --prune` forgets them from the state.",
    ]


def test_plan_text_colour_only_when_asked() -> None:
    plan = make_plan([device("P/a")], {}, lineage="L", serial=0)
    assert not any("\x1b[" in line for line in render.plan_text(plan))
    assert any("\x1b[32m" in line for line in render.plan_text(plan, color=True))


def big_plan(n: int) -> Plan:
    changes = tuple(
        Change(
            key=f"P{i % 1000}/dev-{i:06d}",
            action=Action.UPDATE,
            manifest=f"manifest-{i % 1000:04d}",
            source=f"configs/m{i % 1000}.yaml:{i}",
            payload='{"a":2}',
            payload_sha256_after=hashlib.sha256(b'{"a":2}').hexdigest(),
            payload_before='{"a":1}',
        )
        for i in range(n)
    )
    return Plan("L", 1, changes, Summary(update=n), {})


def test_markdown_of_100k_changes_stays_within_limit_and_counts_left_out() -> None:
    text = plan_markdown(big_plan(100_000), grouped=False)  # --detail full
    assert len(text) <= MARKDOWN_LIMIT
    assert text.startswith(MARKDOWN_MARKER + "\n### rrpcsync plan")
    assert "| 0 | 100000 | 0 | 0 | 0 |" in text
    shown = len(re.findall(r"^~ P\d+/dev-", text, flags=re.M))
    (left_out,) = re.findall(r"\*\*(\d+) change\(s\) not shown", text)
    assert shown > 0
    assert shown + int(left_out) == 100_000


def test_markdown_small_plan_is_complete() -> None:
    text = plan_markdown(big_plan(3))
    assert "not shown" not in text
    assert text.count("<details>") == 3


def test_markdown_no_changes() -> None:
    text = plan_markdown(Plan("L", 1, (), Summary(noop=5), {}))
    assert "No changes" in text
    assert MARKDOWN_MARKER in text


def test_github_annotation_escapes() -> None:
    diag = Diagnostic("a,b:c.yaml", 3, 4, "$.x", "bad\nvalue 100%")
    assert render.github_annotation(diag) == (
        "::error file=a%2Cb%3Ac.yaml,line=3,col=4::$.x: bad%0Avalue 100%25"
    )
