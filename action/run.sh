#!/usr/bin/env bash
# The step of the rrpcsync composite action (../action.yml), runnable on its own.
#
# Inputs arrive as environment variables set by the composite step; they are never interpolated
# into this script (it holds no GitHub expression), so no path or argument can inject shell code:
#   INPUT_COMMAND  validate | plan | apply | drift | report
#                  (drift = rrpcsync drift: probe, report only; report = rrpcsync report)
#   INPUT_PATHS    manifest files/folders, separated by spaces or newlines (empty: configs/)
#   INPUT_STATE    state file for plan/apply/drift/report (empty: RRPCSYNC_STATE or the default)
#   INPUT_ARGS     extra arguments, separated by spaces or newlines; no shell quoting or globbing
# Other variables:
#   RRPCSYNC_ACTION_PATH          where the action is checked out (default GITHUB_ACTION_PATH);
#                                 rrpcsync is pip-installed from there
#   RRPCSYNC_ACTION_SKIP_INSTALL  1: do not pip install (rrpcsync is already importable)
#   RRPCSYNC_PYTHON               the Python to use (default python, else python3)
#   RRPCSYNC_APP_KEY, RRPCSYNC_APP_SECRET, RRPCSYNC_USER, RRPCSYNC_PASSWORD, or a static
#   RRPCSYNC_ACCESS_TOKEN         read by rrpcsync itself; this script only checks that the key
#                                 or the token is set, and never expands or prints a secret
# Outputs (appended to $GITHUB_OUTPUT; printed on stdout when it is not set):
#   exitcode            rrpcsync's exit code
#   has-changes         plan/drift: true (exit 2) or false (exit 0); validate: false; apply: empty
#   plan-markdown-file  plan/drift: the markdown (PR comment) form of the plan; else empty
# The step fails when rrpcsync does, except that plan/drift exit 2 ("changes present") succeeds.
set -euo pipefail

command=${INPUT_COMMAND:-plan}
state=${INPUT_STATE:-}

annotate() { # level message: a workflow command the runner shows as an annotation
  printf '::%s title=rrpcsync action::%s\n' "$1" "$2"
}

set_output() { # name value
  case $2 in
    *$'\n'* | *$'\r'*)
      annotate error "output $1 would span several lines"
      exit 1
      ;;
  esac
  if [[ -n ${GITHUB_OUTPUT:-} ]]; then
    printf '%s=%s\n' "$1" "$2" >>"$GITHUB_OUTPUT"
  else
    printf 'output %s=%s\n' "$1" "$2"
  fi
}

append_words() { # text: split on blanks and newlines (no globbing) and append to cmd
  local -a words=()
  local word
  read -r -d '' -a words <<<"$1" || true
  for word in ${words[@]+"${words[@]}"}; do
    cmd+=("$word")
  done
}

python=${RRPCSYNC_PYTHON:-}
if [[ -z $python ]]; then
  if command -v python >/dev/null 2>&1; then python=python; else python=python3; fi
fi

if [[ ${RRPCSYNC_ACTION_SKIP_INSTALL:-} != 1 ]]; then
  action_path=${RRPCSYNC_ACTION_PATH:-${GITHUB_ACTION_PATH:-}}
  if [[ -z $action_path ]]; then
    annotate error "RRPCSYNC_ACTION_PATH is not set: cannot tell where to install rrpcsync from"
    exit 1
  fi
  echo "::group::Install rrpcsync from $action_path"
  package=$action_path
  if [[ ${state:-${RRPCSYNC_STATE:-}} == postgres* ]]; then
    package="${action_path}[postgres]"  # the PostgreSQL store needs psycopg (docs/state.md)
  fi
  "$python" -m pip install --disable-pip-version-check --quiet "$package"
  echo "::endgroup::"
fi

markdown=""
cmd=("$python" -m rrpcsync)
case $command in
  validate)
    cmd+=(validate --format github)
    ;;
  plan | drift)
    markdown_dir=$(mktemp -d "${RUNNER_TEMP:-${TMPDIR:-/tmp}}/rrpcsync-plan.XXXXXX")
    markdown="$markdown_dir/plan.md"
    if [[ $command == drift ]]; then
      # = plan --refresh --detailed-exitcode: probes devices (spec.probe), writes no state
      cmd+=(drift --out-markdown "$markdown")
    else
      cmd+=(plan --detailed-exitcode --out-markdown "$markdown")
    fi
    ;;
  apply)
    cmd+=(apply)
    if [[ -z ${RRPCSYNC_APP_KEY:-} && -z ${RRPCSYNC_ACCESS_TOKEN:-} &&
      " ${INPUT_ARGS:-} " != *--access-token-file* &&
      " ${INPUT_ARGS:-} " != *--credentials-file* ]]; then
      annotate warning "no credentials: set RRPCSYNC_APP_KEY, RRPCSYNC_APP_SECRET, RRPCSYNC_USER \
and RRPCSYNC_PASSWORD (or a static RRPCSYNC_ACCESS_TOKEN) in the step's env from secrets \
(docs/auth.md); without them only an apply with nothing to send succeeds"
    fi
    ;;
  report)
    cmd+=(report) # reads the manifests and the state; writes only the page of --html
    ;;
  *)
    annotate error "unknown command '$command': use validate, plan, apply, drift or report"
    exit 1
    ;;
esac
if [[ -n $state && $command != validate ]]; then
  if [[ $command == apply && $state != *://* ]]; then
    mkdir -p -- "$(dirname -- "$state")"
  fi
  cmd+=(--state "$state")
fi
append_words "${INPUT_ARGS:-}"
cmd+=(--)
append_words "${INPUT_PATHS:-}"

# The command line holds no secret: the token is only ever read from the environment.
# A PostgreSQL URL's password (better kept in PGPASSWORD) is masked too.
{
  printf '+ rrpcsync'
  printf ' %q' "${cmd[@]:3}"
  printf '\n'
} | sed -E 's#(postgres(ql)?://[^:/@]*):[^@/]*@#\1:***@#g'

status=0
"${cmd[@]}" || status=$?

set_output exitcode "$status"
case $command in
  plan | drift)
    case $status in
      0) set_output has-changes false ;;
      2) set_output has-changes true ;;
      *) set_output has-changes "" ;;
    esac
    if [[ $status == 0 || $status == 2 ]]; then
      set_output plan-markdown-file "$markdown"
    else
      set_output plan-markdown-file ""
    fi
    ;;
  validate)
    set_output has-changes false
    set_output plan-markdown-file ""
    ;;
  *)
    set_output has-changes ""
    set_output plan-markdown-file ""
    ;;
esac

case $command:$status in
  plan:2 | drift:2 | *:0) exit 0 ;;
  validate:1) annotate error "the manifests are not valid (see the annotations)" ;;
  apply:3) annotate error "apply finished but some devices failed (see the job summary)" ;;
  *:4) annotate error "the state is locked by another run (exit 4)" ;;
  *:130) annotate error "rrpcsync was interrupted; the state was saved (exit 130)" ;;
  *) annotate error "rrpcsync $command failed (exit $status)" ;;
esac
exit "$status"
