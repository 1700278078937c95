#!/usr/bin/env bash
# Shared by the launch scripts (sourced, not run).

# Split `--dry-run` from the other arguments: sets DRY_RUN (0/1) and the array ARGS.
parse_dry_run() {
    DRY_RUN=0
    ARGS=()
    local arg
    for arg in "$@"; do
        if [[ "$arg" == "--dry-run" ]]; then DRY_RUN=1; else ARGS+=("$arg"); fi
    done
}

# With --dry-run print the command (shell-quoted, one line); otherwise run it in place of this shell.
print_or_exec() {
    if [[ "${DRY_RUN:-0}" == 1 ]]; then
        printf '%q ' "$@"
        printf '\n'
        exit 0
    fi
    exec "$@"
}
