"""GitOps in CI: workflow annotations and step summaries of the CLI, the composite action's script
(action/run.sh) against the emulator, the state-branch scripts against a local git remote, and
the structure of action.yml, the example workflows (GitHub, GitLab) and the pre-commit hook."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from rrpcsync.planning.render import MARKDOWN_MARKER

from .helpers import ROOT, manifest_text, write

RUN_SH = ROOT / "action" / "run.sh"
ACTION = ROOT / "action.yml"
EXAMPLES_GITHUB = ROOT / "examples" / "github"
GITLAB_CI = ROOT / "examples" / "gitlab" / ".gitlab-ci.yml"
WORKFLOWS = sorted(EXAMPLES_GITHUB.glob("*.yml")) + sorted(
    (ROOT / ".github" / "workflows").glob("*.yml")
)
# A token no output may ever contain (the emulator is told to accept it).
TOKEN = "tok-9f8e7d6c-never-print-me"
BAD_PRODUCT = manifest_text(product='"bad id"')  # productId on line 6, its value at column 14
ANNOTATION = re.compile(
    r"^::error file=configs/bad\.yaml,line=6,col=14::\$\.spec\.productId: .+$", re.MULTILINE
)
PINNED = re.compile(r"^[\w.-]+/[\w.-]+(/[\w./-]+)?@(v\d+(\.\d+){0,2}|[0-9a-f]{40})$")


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A manifests repository: configs/fleet.yaml declares P1/d1 and P1/d2."""
    work = tmp_path / "repo"
    write(work / "configs" / "fleet.yaml", manifest_text(devices="[d1, d2]"))
    (tmp_path / "runner").mkdir()
    return work


def ci_env(work: Path, github: bool = True, **extra: str) -> dict[str, str]:
    """The environment of a GitHub Actions step, with rrpcsync importable from this checkout."""
    env = {k: v for k, v in os.environ.items() if k != "RRPCSYNC_ACCESS_TOKEN"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["NO_COLOR"] = "1"
    if github:
        env["GITHUB_ACTIONS"] = "true"
        env["GITHUB_STEP_SUMMARY"] = str(work.parent / "summary.md")
    env.update(extra)
    return env


def cli(work: Path, *args: str, github: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rrpcsync", *args],
        cwd=work,
        env=ci_env(work, github),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class Step:
    """One run of action/run.sh as the composite step runs it."""

    def __init__(self, work: Path, inputs: Mapping[str, str], **env: str) -> None:
        output_file = work.parent / "github_output"
        output_file.write_text("", encoding="utf-8")
        variables = ci_env(
            work,
            GITHUB_OUTPUT=str(output_file),
            RUNNER_TEMP=str(work.parent / "runner"),
            RRPCSYNC_ACTION_SKIP_INSTALL="1",
            RRPCSYNC_PYTHON=sys.executable,
        )
        variables.update({f"INPUT_{name.upper()}": value for name, value in inputs.items()})
        variables.update(env)
        self.proc = subprocess.run(
            ["bash", str(RUN_SH)],
            cwd=work,
            env=variables,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        self.raw_outputs = output_file.read_text(encoding="utf-8")

    @property
    def code(self) -> int:
        return self.proc.returncode

    @property
    def outputs(self) -> dict[str, str]:
        pairs = (line.split("=", 1) for line in self.raw_outputs.splitlines())
        return {name: value for name, value in pairs}

    def everything_printed(self) -> str:
        return self.proc.stdout + self.proc.stderr + self.raw_outputs


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def triggers(workflow: Mapping[Any, Any]) -> Any:
    # YAML 1.1 (PyYAML) reads the key `on` as True.
    return workflow.get("on", workflow.get(True))


def steps_of(doc: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    if "runs" in doc:
        yield from doc["runs"]["steps"]
    for job in (doc.get("jobs") or {}).values():
        yield from job.get("steps", [])


def step_named(doc: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    found = [s for s in steps_of(doc) if str(s.get("name", "")).startswith(prefix)]
    assert len(found) == 1, f"one step named {prefix!r}, found {len(found)}"
    return found[0]


def action_step(doc: Mapping[str, Any], command: str) -> dict[str, Any]:
    found = [
        s
        for s in steps_of(doc)
        if str(s.get("uses", "")).startswith("rrpcsync/rrpcsync@")
        and s.get("with", {}).get("command") == command
    ]
    assert len(found) == 1, f"one rrpcsync {command} step, found {len(found)}"
    return found[0]


# --------------------------------------------------------------------------- the CLI in CI


def test_validate_github_format_prints_annotations(workdir: Path) -> None:
    write(workdir / "configs" / "bad.yaml", BAD_PRODUCT)
    proc = cli(workdir, "validate", "--format", "github", "configs", github=False)
    assert proc.returncode == 1
    assert len(ANNOTATION.findall(proc.stdout)) == 1
    assert "configs/bad.yaml:6:14: error: $.spec.productId" in proc.stderr


def test_plain_validate_and_plan_annotate_only_under_github_actions(workdir: Path) -> None:
    write(workdir / "configs" / "bad.yaml", BAD_PRODUCT)
    for command in ("validate", "plan"):
        in_ci = cli(workdir, command, "configs")
        assert in_ci.returncode == 1, command
        assert len(ANNOTATION.findall(in_ci.stdout)) == 1, command
    local = cli(workdir, "validate", "configs", github=False)
    assert local.returncode == 1
    assert "::error" not in local.stdout + local.stderr


def test_valid_manifests_give_no_annotation(workdir: Path) -> None:
    proc = cli(workdir, "validate", "--format", "github", "configs")
    assert proc.returncode == 0
    assert proc.stdout == ""


def test_plan_appends_its_markdown_to_the_step_summary(workdir: Path) -> None:
    summary = workdir.parent / "summary.md"
    summary.write_text("an earlier step\n", encoding="utf-8")
    proc = cli(workdir, "plan", "configs")
    assert proc.returncode == 0
    assert "Plan: 2 to create" in proc.stdout
    text = summary.read_text(encoding="utf-8")
    assert text.startswith("an earlier step\n")  # appended, not replaced
    assert MARKDOWN_MARKER in text.splitlines()
    assert "| 2 | 0 | 0 | 0 | 0 |" in text

    summary.unlink()
    assert cli(workdir, "plan", "configs", github=False).returncode == 0
    assert not summary.exists()  # only under GITHUB_ACTIONS=true


def test_plan_markdown_format_and_out_markdown(workdir: Path) -> None:
    proc = cli(
        workdir,
        "plan",
        "configs",
        "--format",
        "markdown",
        "--out-markdown",
        "comment.md",
        "--detailed-exitcode",
        github=False,
    )
    assert proc.returncode == 2
    assert proc.stdout.splitlines()[0] == MARKDOWN_MARKER
    body = (workdir / "comment.md").read_text(encoding="utf-8")
    assert body.splitlines()[0] == MARKDOWN_MARKER
    assert body.rstrip("\n") == proc.stdout.rstrip("\n")


# --------------------------------------------------------------------------- action/run.sh


def test_action_plan_sets_outputs_and_succeeds_on_changes(workdir: Path) -> None:
    step = Step(workdir, {"command": "plan", "paths": "configs\n", "state": "no/such.json"})
    assert step.code == 0, step.proc.stderr  # exit 2 "changes present" is not a failure
    assert "Plan: 2 to create" in step.proc.stdout
    outputs = step.outputs
    assert outputs["exitcode"] == "2"
    assert outputs["has-changes"] == "true"
    markdown = Path(outputs["plan-markdown-file"])
    assert markdown.is_relative_to(workdir.parent / "runner")
    assert markdown.read_text(encoding="utf-8").splitlines()[0] == MARKDOWN_MARKER
    assert MARKDOWN_MARKER in (workdir.parent / "summary.md").read_text(encoding="utf-8")
    assert not (workdir / "no").exists()  # plan never writes the state


def test_action_apply_then_drift_against_the_emulator(workdir: Path, emulator: Any) -> None:
    emu = emulator({"auto_devices": True, "token": TOKEN})
    env = {"RRPCSYNC_ENDPOINT": emu.url, "RRPCSYNC_ACCESS_TOKEN": TOKEN}
    state = "state/prod/rrpcsync.state.json"  # its folder does not exist yet
    inputs = {"paths": "configs", "state": state}

    apply = Step(workdir, {**inputs, "command": "apply", "args": "--auto-approve"}, **env)
    assert apply.code == 0, apply.proc.stderr
    assert apply.outputs == {"exitcode": "0", "has-changes": "", "plan-markdown-file": ""}
    assert emu.stats(include_log=False)["requests_total"] == 2
    assert (workdir / state).is_file()

    drift = Step(workdir, {**inputs, "command": "drift"}, **env)
    assert drift.code == 0, drift.proc.stderr
    assert drift.outputs["exitcode"] == "0"
    assert drift.outputs["has-changes"] == "false"
    assert "No changes" in Path(drift.outputs["plan-markdown-file"]).read_text(encoding="utf-8")
    assert emu.stats(include_log=False)["requests_total"] == 2

    for step in (apply, drift):
        assert TOKEN not in step.everything_printed()
    assert TOKEN not in (workdir.parent / "summary.md").read_text(encoding="utf-8")
    assert TOKEN not in (workdir / state).read_text(encoding="utf-8")


def test_action_apply_logs_in_with_the_four_secrets(workdir: Path, emulator: Any) -> None:
    secrets = {"app_key": "ak-1", "app_secret": "as-SECRET-2", "password": "pw-SECRET-3"}
    users = [{"email": "ci@example.com", "password": secrets["password"]}]
    login = {"app_key": "ak-1", "app_secret": secrets["app_secret"], "users": users}
    emu = emulator({"auto_devices": True, "token": None, "login": login})
    env = {
        "RRPCSYNC_ENDPOINT": emu.url,
        "RRPCSYNC_APP_KEY": "ak-1",
        "RRPCSYNC_APP_SECRET": secrets["app_secret"],
        "RRPCSYNC_USER": "ci@example.com",
        "RRPCSYNC_PASSWORD": secrets["password"],
    }
    inputs = {"command": "apply", "paths": "configs", "state": "s.json", "args": "--auto-approve"}
    step = Step(workdir, inputs, **env)
    assert step.code == 0, step.proc.stderr
    assert emu.stats(include_log=False)["login"]["logins"] == 1
    assert "no credentials" not in step.proc.stdout
    for secret in (secrets["app_secret"], secrets["password"], *emu.issued_tokens()):
        assert secret not in step.everything_printed()
    missing = Step(workdir, inputs, RRPCSYNC_ENDPOINT=emu.url)
    assert "::warning title=rrpcsync action::no credentials: set RRPCSYNC_APP_KEY" in (
        missing.proc.stdout
    )


def test_action_apply_with_failed_devices_fails_the_step(workdir: Path, emulator: Any) -> None:
    emu = emulator({"auto_devices": True, "token": TOKEN, "devices": {"P1/d2": {"offline": True}}})
    step = Step(
        workdir,
        {"command": "apply", "paths": "configs", "state": "s.json", "args": "--auto-approve"},
        RRPCSYNC_ENDPOINT=emu.url,
        RRPCSYNC_ACCESS_TOKEN=TOKEN,
    )
    assert step.code == 3
    assert step.outputs["exitcode"] == "3"
    assert "::error title=rrpcsync action::apply finished but some devices failed" in (
        step.proc.stdout
    )
    assert TOKEN not in step.everything_printed()


def test_action_validate_annotates_and_fails(workdir: Path) -> None:
    write(workdir / "configs" / "bad.yaml", BAD_PRODUCT)
    step = Step(workdir, {"command": "validate", "paths": "configs"})
    assert step.code == 1
    assert step.outputs == {"exitcode": "1", "has-changes": "false", "plan-markdown-file": ""}
    assert len(ANNOTATION.findall(step.proc.stdout)) == 1


def test_action_report_writes_the_page_and_the_step_summary(workdir: Path) -> None:
    step = Step(workdir, {"command": "report", "args": "--html report.html"})
    assert step.code == 0, step.everything_printed()
    assert step.outputs == {"exitcode": "0", "has-changes": "", "plan-markdown-file": ""}
    page = (workdir / "report.html").read_text(encoding="utf-8")
    assert page.startswith("<!doctype html>") and 'data-metric="never_sent">2<' in page
    summary = (workdir.parent / "summary.md").read_text(encoding="utf-8")
    assert summary.startswith("<!-- rrpcsync-report -->") and "```mermaid" in summary


def test_action_refuses_an_unknown_command(workdir: Path) -> None:
    step = Step(workdir, {"command": "destroy"})
    assert step.code == 1
    assert "unknown command 'destroy'" in step.proc.stdout
    assert step.raw_outputs == ""


def test_action_inputs_are_never_run_as_shell_code(workdir: Path) -> None:
    step = Step(
        workdir,
        {
            "command": "validate",
            "paths": "configs\n$(touch pwned-paths)",
            "args": "; touch pwned-args `touch pwned-backticks` *",
        },
    )
    assert step.code == 1  # the words are passed to rrpcsync as they are: paths that do not exist
    assert list(workdir.glob("pwned*")) == []
    assert "::error file=$(touch,line=1,col=1::" in step.proc.stdout
    assert "::error file=*,line=1,col=1::" in step.proc.stdout  # no globbing either


@pytest.mark.parametrize("skip", [False, True], ids=["installs", "skips-install"])
def test_action_installs_rrpcsync_from_its_own_checkout(workdir: Path, skip: bool) -> None:
    log = workdir.parent / "python.log"
    fake = workdir.parent / "fake-python"
    fake.write_text(
        "#!/bin/sh\n"
        'printf "%s\\n" "$*" >>"$FAKE_PYTHON_LOG"\n'
        'if [ "$1" = -m ] && [ "$2" = pip ]; then exit 0; fi\n'
        'exec "$REAL_PYTHON" "$@"\n',
        encoding="utf-8",
    )
    fake.chmod(0o755)
    step = Step(
        workdir,
        {"command": "validate", "paths": "configs"},
        RRPCSYNC_PYTHON=str(fake),
        RRPCSYNC_ACTION_SKIP_INSTALL="1" if skip else "",
        RRPCSYNC_ACTION_PATH="/opt/actions/rrpcsync",
        FAKE_PYTHON_LOG=str(log),
        REAL_PYTHON=sys.executable,
    )
    assert step.code == 0, step.proc.stdout + step.proc.stderr
    calls = log.read_text(encoding="utf-8").splitlines()
    install = "-m pip install --disable-pip-version-check --quiet /opt/actions/rrpcsync"
    assert calls[0] == ("-m rrpcsync validate --format github -- configs" if skip else install)
    assert len(calls) == (1 if skip else 2)


def test_action_without_an_action_path_cannot_install(workdir: Path) -> None:
    step = Step(
        workdir,
        {"command": "validate"},
        RRPCSYNC_ACTION_SKIP_INSTALL="",
        RRPCSYNC_ACTION_PATH="",
        GITHUB_ACTION_PATH="",
    )
    assert step.code == 1
    assert "cannot tell where to install rrpcsync from" in step.proc.stdout


def test_action_script_style() -> None:
    text = RUN_SH.read_text(encoding="utf-8")
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    assert "${{" not in text
    # The token and the app key are only tested for emptiness, never expanded into a command
    # or a message; the password and the AppSecret are never read at all.
    uses = re.findall(r"\$\{?RRPCSYNC_(?:ACCESS_TOKEN|APP_KEY)[^\s\"]*", text)
    assert uses == ["${RRPCSYNC_APP_KEY:-}", "${RRPCSYNC_ACCESS_TOKEN:-}"]
    assert not re.search(r"\$\{?RRPCSYNC_(PASSWORD|APP_SECRET|USER)", text)
    assert RUN_SH.stat().st_mode & stat.S_IXUSR


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_action_script_is_shellcheck_clean() -> None:
    proc = subprocess.run(
        ["shellcheck", str(RUN_SH)], capture_output=True, text=True, check=False, timeout=60
    )
    assert proc.returncode == 0, proc.stdout


# --------------------------------------------------------------------------- the state branch


def git(cwd: Path, *args: str) -> str:
    proc = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=30
    )
    return proc.stdout.strip()


def clone(origin: Path, into: Path) -> Path:
    subprocess.run(["git", "clone", "-q", str(origin), str(into)], check=True, timeout=30)
    return into


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    """A bare remote holding a manifests repository with one commit on main."""
    remote = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(remote))
    seed = tmp_path / "seed"
    git(tmp_path, "init", "-q", "-b", "main", str(seed))
    write(seed / "configs" / "fleet.yaml", manifest_text())
    git(seed, "add", ".")
    git(seed, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "seed")
    git(seed, "push", "-q", str(remote), "main")
    return remote


def run_script(
    script: str, cwd: Path, env: Mapping[str, str], shell: str = "bash"
) -> dict[str, str]:
    """Run a workflow's `run:` (bash -eo pipefail, like `shell: bash`); return its outputs."""
    output = cwd.parent / f"{cwd.name}.output"
    output.write_text("", encoding="utf-8")
    flags = ["-eo", "pipefail"] if shell == "bash" else ["-e"]
    proc = subprocess.run(
        [shell, *flags, "-c", script],
        cwd=cwd,
        env={**os.environ, **env, "GITHUB_OUTPUT": str(output)},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = output.read_text(encoding="utf-8").splitlines()
    return dict(line.split("=", 1) for line in lines)


STATE_V1 = '{"serial": 1}\n'
STATE_V2 = '{"serial": 2}\n'
HISTORY = '{"command": "apply"}\n'


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
@pytest.mark.parametrize("workflow", ["apply.yml", "drift.yml"])
def test_github_state_branch_round_trip(origin: Path, tmp_path: Path, workflow: str) -> None:
    doc = load(EXAMPLES_GITHUB / workflow)
    restore = step_named(doc, "Restore the state")["run"]
    save_step = step_named(doc, "Save the state to the state branch")
    save_env = {k: v for k, v in save_step["env"].items() if "${{" not in v}
    env = {
        **{k: str(v) for k, v in doc["env"].items()},
        "GITHUB_REPOSITORY": "acme/fleet",
        "GITHUB_SERVER_URL": "https://github.example",
        "GITHUB_RUN_ID": "42",
        "GITHUB_RUN_NUMBER": "7",
        "GITHUB_WORKFLOW": "rrpcsync apply",
        "GH_TOKEN": "unused",
        **save_env,
    }
    state = env["RRPCSYNC_STATE"]
    branch = env["RRPCSYNC_STATE_BRANCH"]

    first = clone(origin, tmp_path / "run1")
    assert run_script(restore, first, env) == {"restored": "true"}  # no branch yet: empty
    assert not (first / state).exists()
    write(first / state, STATE_V1)
    run_script(save_step["run"], first, {**env, "BASE": ""})
    assert git(origin, "show", f"{branch}:rrpcsync.state.json") + "\n" == STATE_V1

    second = clone(origin, tmp_path / "run2")
    outputs = run_script(restore, second, env)
    base = git(origin, "rev-parse", branch)
    assert outputs == {"base": base, "restored": "true"}
    assert (second / state).read_text(encoding="utf-8") == STATE_V1
    run_script(save_step["run"], second, {**env, "BASE": base})  # unchanged: no commit
    assert git(origin, "rev-parse", branch) == base

    (second / state).write_text(STATE_V2, encoding="utf-8")
    run_script(save_step["run"], second, {**env, "BASE": base})
    assert git(origin, "rev-parse", f"{branch}~1") == base
    assert git(origin, "show", f"{branch}:rrpcsync.state.json") + "\n" == STATE_V2
    assert git(origin, "ls-tree", "--name-only", branch) == "rrpcsync.state.json"
    assert git(origin, "rev-parse", "main") != git(origin, "rev-parse", branch)

    # the run history (rrpcsync report's History) travels with the state
    (second / f"{state}.history").write_text(HISTORY, encoding="utf-8")
    run_script(save_step["run"], second, {**env, "BASE": git(origin, "rev-parse", branch)})
    assert git(origin, "show", f"{branch}:rrpcsync.state.json.history") + "\n" == HISTORY
    third = clone(origin, tmp_path / "run3")
    run_script(restore, third, env)
    assert (third / f"{state}.history").read_text(encoding="utf-8") == HISTORY


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_gitlab_state_branch_round_trip(origin: Path, tmp_path: Path) -> None:
    doc = load(GITLAB_CI)
    pieces = doc[".scripts"]
    restore, save = pieces["restore-state"][0], pieces["save-state"][0]
    env = {
        **{k: str(v) for k, v in doc["variables"].items()},
        "CI_SERVER_URL": f"file://{origin.parent}",
        "CI_PROJECT_PATH": origin.stem,  # pushes to file://…/origin.git
        "CI_SERVER_HOST": "gitlab.example",
        "CI_PIPELINE_ID": "9",
        "CI_JOB_URL": "https://gitlab.example/acme/fleet/-/jobs/9",
        "RRPCSYNC_STATE_PUSH_TOKEN": "unused",
    }
    state = env["RRPCSYNC_STATE"]
    branch = env["RRPCSYNC_STATE_BRANCH"]
    work = clone(origin, tmp_path / "job1")
    # before_script and script share one shell: the restore's variables reach the save.
    make_state = f"printf '%s\\n' '{STATE_V1.strip()}' >\"$RRPCSYNC_STATE\""
    run_script(f"{restore}\n{make_state}\n{save}", work, env, "sh")
    assert git(origin, "show", f"{branch}:rrpcsync.state.json") + "\n" == STATE_V1
    base = git(origin, "rev-parse", branch)

    work = clone(origin, tmp_path / "job2")
    run_script(f"{restore}\n{save}", work, env, "sh")  # unchanged: no commit
    assert git(origin, "rev-parse", branch) == base
    assert (work / state).read_text(encoding="utf-8") == STATE_V1

    work = clone(origin, tmp_path / "job3")  # the run history travels with the state
    make_history = f"printf '%s\\n' '{HISTORY.strip()}' >\"$RRPCSYNC_STATE.history\""
    run_script(f"{restore}\n{make_history}\n{save}", work, env, "sh")
    assert git(origin, "show", f"{branch}:rrpcsync.state.json.history") + "\n" == HISTORY
    work = clone(origin, tmp_path / "job4")
    run_script(restore, work, env, "sh")
    assert (work / f"{state}.history").read_text(encoding="utf-8") == HISTORY


# --------------------------------------------------------------------------- workflow files


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: str(p.relative_to(ROOT)))
def test_workflow_structure(path: Path) -> None:
    workflow = load(path)
    assert isinstance(workflow.get("name"), str)
    assert triggers(workflow)
    assert "permissions" in workflow  # the default token's rights are never left implicit
    assert workflow["jobs"]
    for name, job in workflow["jobs"].items():
        assert job.get("runs-on"), name
        assert job["steps"], name
        for step in job["steps"]:
            assert ("uses" in step) != ("run" in step), (name, step)
        if path.parent == EXAMPLES_GITHUB:
            assert workflow["permissions"] == {}
            assert isinstance(job.get("permissions"), dict), f"{name}: permissions per job"


@pytest.mark.parametrize("path", [*WORKFLOWS, ACTION], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_action_is_pinned_and_no_run_interpolates(path: Path) -> None:
    doc = load(path)
    for step in steps_of(doc):
        if "uses" in step:
            uses = step["uses"]
            assert uses == "./" or PINNED.match(uses), f"{uses} is not pinned to a version"
        if "run" in step:  # expressions reach scripts through env:, never spliced into code
            assert "${{" not in step["run"], step.get("name")
        for value in (step.get("with") or {}).values():
            assert "secrets." not in str(value), "secrets go to env:, never to inputs"


def test_plan_workflow() -> None:
    workflow = load(EXAMPLES_GITHUB / "plan.yml")
    assert "pull_request" in triggers(workflow)
    (job,) = workflow["jobs"].values()
    assert job["permissions"]["pull-requests"] == "write"
    assert job["permissions"]["contents"] == "read"
    names = [str(step.get("with", {}).get("command")) for step in job["steps"]]
    assert names.index("validate") < names.index("plan")
    comment = step_named(workflow, "Post or update the plan comment")
    assert comment["uses"].startswith("actions/github-script@")
    assert f"'{MARKDOWN_MARKER}'" in comment["with"]["script"]
    assert comment["env"]["PLAN_FILE"] == "${{ steps.plan.outputs.plan-markdown-file }}"
    assert "secrets." not in (EXAMPLES_GITHUB / "plan.yml").read_text(encoding="utf-8")


LOGIN_SECRETS = {
    name: f"${{{{ secrets.{name} }}}}"
    for name in ("RRPCSYNC_APP_KEY", "RRPCSYNC_APP_SECRET", "RRPCSYNC_USER", "RRPCSYNC_PASSWORD")
}


def test_apply_workflow() -> None:
    workflow = load(EXAMPLES_GITHUB / "apply.yml")
    assert triggers(workflow)["push"]["branches"] == ["main"]
    assert workflow["concurrency"] == {"group": "rrpcsync-apply", "cancel-in-progress": False}
    (job,) = workflow["jobs"].values()
    assert job["permissions"]["contents"] == "write"
    apply = action_step(workflow, "apply")
    assert "--auto-approve" in apply["with"]["args"].split()
    assert apply["env"] == LOGIN_SECRETS
    assert workflow["env"]["RRPCSYNC_MAX_SENDS"] == "${{ vars.RRPCSYNC_MAX_SENDS || '25%' }}"
    for name in ("Save the state to the state branch", "Keep the state as an artifact"):
        assert step_named(workflow, name)["if"].startswith("always()")
    assert "exitcode == '3'" in step_named(workflow, "List the devices that failed")["if"]
    report_steps_run_always(workflow)


def test_drift_workflow() -> None:
    workflow = load(EXAMPLES_GITHUB / "drift.yml")
    on = triggers(workflow)
    assert on["schedule"][0]["cron"]
    assert "workflow_dispatch" in on
    assert workflow["concurrency"] == load(EXAMPLES_GITHUB / "apply.yml")["concurrency"]
    (job,) = workflow["jobs"].values()
    assert job["permissions"]["issues"] == "write"
    assert action_step(workflow, "drift")["id"] == "drift"
    assert action_step(workflow, "drift")["env"] == LOGIN_SECRETS
    apply = action_step(workflow, "apply")
    assert "--auto-approve" in apply["with"]["args"].split()
    assert apply["env"] == LOGIN_SECRETS
    assert workflow["env"]["RRPCSYNC_MAX_SENDS"] == "${{ vars.RRPCSYNC_MAX_SENDS || '25%' }}"
    issue = step_named(workflow, "Open, update or close the failure issue")
    assert "steps.apply.outputs.exitcode == '3'" in issue["if"]
    report_steps_run_always(workflow)


@pytest.mark.parametrize("path", sorted(EXAMPLES_GITHUB.glob("*.yml")), ids=lambda p: p.name)
def test_every_apply_workflow_keeps_the_fleet_report(path: Path) -> None:
    workflow = load(path)
    applies = [s for s in steps_of(workflow) if s.get("with", {}).get("command") == "apply"]
    if not applies:
        return
    report = action_step(workflow, "report")
    assert report["if"].startswith("always()") and "--html rrpcsync-report.html" in str(report)
    upload = step_named(workflow, "Keep the fleet report as an artifact")
    assert upload["if"].startswith("always()") and upload["with"]["path"] == "rrpcsync-report.html"
    names = [step.get("name") for step in steps_of(workflow)]
    assert names.index("Fleet report") > max(names.index(a.get("name")) for a in applies)


def report_steps_run_always(workflow: Mapping[str, Any]) -> None:
    """After apply and drift: the fleet report, kept as an artifact, whatever happened."""
    report = action_step(workflow, "report")
    assert report["if"].startswith("always()")
    assert "--html rrpcsync-report.html" in report["with"]["args"]
    upload = step_named(workflow, "Keep the fleet report as an artifact")
    assert upload["if"] == report["if"]
    assert upload["uses"].startswith("actions/upload-artifact@")
    assert upload["with"]["path"] == "rrpcsync-report.html"
    state_artifact = step_named(workflow, "Keep the state as an artifact")["with"]["path"]
    assert "${{ env.RRPCSYNC_STATE }}.history" in state_artifact.splitlines()


def test_action_metadata() -> None:
    action = load(ACTION)
    assert {"command", "paths", "state", "args"} <= set(action["inputs"])
    assert not [name for name in action["inputs"] if "token" in name.lower()]
    outputs = action["outputs"]
    assert set(outputs) == {"exitcode", "has-changes", "plan-markdown-file"}
    for name, output in outputs.items():
        assert output["value"] == "${{ steps.run.outputs." + name + " }}"
        assert output["description"]
    assert action["runs"]["using"] == "composite"
    run = step_named(action, "rrpcsync")
    assert run["id"] == "run"
    assert run["shell"] == "bash"
    assert run["run"] == 'bash "$RRPCSYNC_ACTION_PATH/action/run.sh"'
    assert run["env"] == {
        "INPUT_COMMAND": "${{ inputs.command }}",
        "INPUT_PATHS": "${{ inputs.paths }}",
        "INPUT_STATE": "${{ inputs.state }}",
        "INPUT_ARGS": "${{ inputs.args }}",
        "RRPCSYNC_ACTION_PATH": "${{ github.action_path }}",
    }


def test_project_ci_lints_the_examples() -> None:
    job = load(ROOT / ".github" / "workflows" / "ci.yml")["jobs"]["workflows"]
    scripts = "\n".join(step.get("run", "") for step in job["steps"])
    assert "actionlint .github/workflows/*.yml examples/github/*.yml" in scripts


def test_pre_commit_hook() -> None:
    (hook,) = load(ROOT / ".pre-commit-hooks.yaml")
    assert hook["id"] == "rrpcsync-validate"
    assert hook["language"] == "python"
    assert hook["entry"] == "rrpcsync validate"
    assert hook["pass_filenames"] is True
    files = re.compile(hook["files"])
    assert files.search("configs/a.yaml") and files.search("b.yml")
    assert not files.search("c.json") and not files.search("d.yaml.bak")


def test_gitlab_example() -> None:
    doc = load(GITLAB_CI)
    assert doc["stages"] == ["validate", "plan", "apply"]
    plan, apply = doc["plan"], doc["apply"]
    assert "merge_request_event" in plan["rules"][0]["if"]
    assert "--detailed-exitcode" in str(plan["script"])
    assert "$CI_DEFAULT_BRANCH" in apply["rules"][0]["if"]
    assert apply["resource_group"]
    assert "rrpcsync apply" in str(apply["script"]) and "--auto-approve" in str(apply["script"])
    assert "RRPCSYNC_ACCESS_TOKEN" not in str(doc["variables"])  # a masked CI/CD variable
    assert "rrpcsync report" in str(apply["script"])
    assert apply["artifacts"]["paths"] == ["rrpcsync-report.html"]
    assert apply["artifacts"]["when"] == "always"


def test_ci_docs_cover_every_example() -> None:
    text = (ROOT / "docs" / "ci.md").read_text(encoding="utf-8")
    for name in ("plan.yml", "apply.yml", "drift.yml", ".gitlab-ci.yml", ".pre-commit-hooks.yaml"):
        assert name in text, name
    assert "concurrency" in text and "resource_group" in text


# --------------------------------------------------------------------------- github-script steps

# Runs a workflow's `actions/github-script` code with a recording stand-in for its `github`
# client: argv = script file, scenario file ({"comments": [...], "issues": [...]}).
GITHUB_SCRIPT_HARNESS = """
const fs = require('fs');
const [scriptFile, scenarioFile] = process.argv.slice(2);
const scenario = JSON.parse(fs.readFileSync(scenarioFile, 'utf8'));
const calls = [];
const record = (name) => async (args) => { calls.push([name, args]); return { data: {} }; };
const listing = (items) => Object.assign(async () => ({ data: items }), { items });
const github = {
  paginate: async (list, args) => list.items,
  rest: {
    issues: {
      listComments: listing(scenario.comments || []),
      listForRepo: listing(scenario.issues || []),
      createComment: record('createComment'),
      updateComment: record('updateComment'),
      create: record('create'),
      update: record('update'),
    },
  },
};
const context = {
  repo: { owner: 'acme', repo: 'fleet' }, issue: { number: 5 }, runId: 99,
  serverUrl: 'https://github.example', payload: {},
};
const AsyncFunction = Object.getPrototypeOf(async () => {}).constructor;
new AsyncFunction('require', 'github', 'context', fs.readFileSync(scriptFile, 'utf8'))(
  require, github, context,
).then(() => console.log(JSON.stringify(calls)));
"""


def github_script(
    tmp_path: Path, workflow: str, step: str, scenario: Mapping[str, Any], **env: str
) -> list[tuple[str, dict[str, Any]]]:
    script = tmp_path / "script.js"
    script.write_text(step_named(load(EXAMPLES_GITHUB / workflow), step)["with"]["script"])
    harness = tmp_path / "harness.js"
    harness.write_text(GITHUB_SCRIPT_HARNESS, encoding="utf-8")
    data = tmp_path / "scenario.json"
    data.write_text(json.dumps(scenario), encoding="utf-8")
    proc = subprocess.run(
        ["node", str(harness), str(script), str(data)],
        cwd=tmp_path,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return [(name, args) for name, args in json.loads(proc.stdout)]


needs_node = pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
BOT = {"login": "github-actions[bot]"}


@needs_node
def test_plan_comment_is_created_then_updated(tmp_path: Path) -> None:
    plan_file = tmp_path / "plan.md"
    plan_file.write_text(f"{MARKDOWN_MARKER}\n### rrpcsync plan\n\nthe plan\n", encoding="utf-8")
    env = {"PLAN_FILE": str(plan_file), "HEAD_SHA": "0123456789abcdef"}
    step = "Post or update the plan comment"
    human = {"id": 1, "user": {"login": "alice"}, "body": f"{MARKDOWN_MARKER} quoted"}

    ((name, args),) = github_script(tmp_path, "plan.yml", step, {"comments": [human]}, **env)
    assert name == "createComment"
    assert args["issue_number"] == 5
    assert args["body"].startswith(f"{MARKDOWN_MARKER}\n### rrpcsync plan\n\nthe plan\n")
    assert "Commit 0123456" in args["body"]

    mine = {"id": 7, "user": BOT, "body": f"{MARKDOWN_MARKER}\nold plan"}
    ((name, args),) = github_script(tmp_path, "plan.yml", step, {"comments": [human, mine]}, **env)
    assert name == "updateComment"
    assert args["comment_id"] == 7
    assert "the plan" in args["body"]

    env["PLAN_FILE"] = ""  # validation failed: no plan
    ((name, args),) = github_script(tmp_path, "plan.yml", step, {"comments": [mine]}, **env)
    assert name == "updateComment"
    assert args["body"].startswith(MARKDOWN_MARKER)
    assert "No plan: the manifests are not valid" in args["body"]


@needs_node
def test_drift_issue_lifecycle(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    failed = {"status": "failed", "manifest": "m1"}
    devices = {
        "P1/d1": {"status": "applied", "manifest": "m1", "last_error": None},
        "P1/d2": {**failed, "last_error": {"code": "FailedOperation.DeviceOffline", "at": "T1"}},
    }
    state.write_text(json.dumps({"devices": devices}), encoding="utf-8")
    step = "Open, update or close the failure issue"
    env = {"RRPCSYNC_STATE": str(state), "APPLY_EXITCODE": "3"}

    ((name, args),) = github_script(tmp_path, "drift.yml", step, {}, **env)
    assert name == "create"
    assert args["title"] == "rrpcsync: 1 device(s) stay failed"
    assert args["body"].startswith("<!-- rrpcsync-drift -->\n")
    assert "| P1/d2 | FailedOperation.DeviceOffline | T1 | m1 |" in args["body"]

    issue = {"number": 11, "body": args["body"]}
    ((name, args),) = github_script(tmp_path, "drift.yml", step, {"issues": [issue]}, **env)
    assert (name, args["issue_number"]) == ("update", 11)  # same devices: no new comment

    devices["P1/d1"] = {**failed, "last_error": {"code": "FailedOperation.RRPCTimeout", "at": "T2"}}
    state.write_text(json.dumps({"devices": devices}), encoding="utf-8")
    calls = github_script(tmp_path, "drift.yml", step, {"issues": [issue]}, **env)
    assert [name for name, _ in calls] == ["createComment", "update"]
    assert "2 device(s) stay failed" in calls[1][1]["title"]

    env["APPLY_EXITCODE"] = "0"  # outside a maintenance window: deferred, still failed
    assert github_script(tmp_path, "drift.yml", step, {"issues": [issue]}, **env) == []

    for device in devices.values():
        device.update(status="applied", last_error=None)
    state.write_text(json.dumps({"devices": devices}), encoding="utf-8")
    calls = github_script(tmp_path, "drift.yml", step, {"issues": [issue]}, **env)
    assert [name for name, _ in calls] == ["createComment", "update"]
    assert calls[1][1]["state"] == "closed"
    assert github_script(tmp_path, "drift.yml", step, {}, **env) == []
