#!/usr/bin/env bash
# The test command: build/refresh the environment, lint, then run one tier of the suite.
#
#   bash scripts/test.sh                  default tier: unit tests + the core end-to-end set
#                                         (pytest -m "not slow and not kit")
#   bash scripts/test.sh --all            every tier: default + slow + the GPU kit (no marker filter)
#   bash scripts/test.sh -m slow          your own marker selection: no tier filter is added
#   bash scripts/test.sh tests/unit -x    any other arguments go to pytest (with the default filter
#                                         unless -m or --all is given)
#
# pytest prints the 15 slowest tests (a later --durations=N wins); the last line gives the tier's time.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
started=$SECONDS
all=0
marker=""
args=()
previous=""
for arg in "$@"; do
    case "$arg" in
        --all) all=1 ;;
        -m | --markexpr) marker="?" args+=("$arg") ;;
        -m?*) marker="${arg#-m}" args+=("$arg") ;;
        --markexpr=*) marker="${arg#--markexpr=}" args+=("$arg") ;;
        *)
            [[ "$previous" == -m || "$previous" == --markexpr ]] && marker="$arg"
            args+=("$arg")
            ;;
    esac
    previous="$arg"
done
filter=()
tier="tier -m \"${marker}\""
if ((all)); then
    tier="all tiers (--all)"
elif [[ -z "$marker" ]]; then
    filter=(-m "not slow and not kit")
    tier="default tier (-m \"not slow and not kit\")"
fi
bash scripts/setup.sh
VENV="${PSFT_VENV:-$ROOT/.venv}"
"$VENV/bin/ruff" check .
before_pytest=$SECONDS
status=0
"$VENV/bin/python" -m pytest "${filter[@]}" --durations=15 "${args[@]}" || status=$?
now=$SECONDS
echo "[test] ${tier}: pytest $(((now - before_pytest) / 60)) min $(((now - before_pytest) % 60)) s;" \
    "with set-up and ruff $(((now - started) / 60)) min $(((now - started) % 60)) s; exit ${status}"
exit "$status"
