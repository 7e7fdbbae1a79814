#!/bin/sh
# EXAMPLE AGENT — a scripted stand-in for a real coding agent, so the quickstart runs with no
# API key. It follows the hyperloop agent contract (prompt on stdin, context in HYPERLOOP_*
# variables, verdict in $HYPERLOOP_RESULT_FILE) but does no thinking: specs in this example
# spell out the files to create in blocks like
#
#     ```file:greet.sh
#     ...contents...
#     ```
#
# and the implementer copies them verbatim. Switch to Claude Code by setting
# `agent.runtime: claude` in .hyperloop.yaml.
set -eu

prompt=$(cat)

result() { # verdict, body
  {
    printf -- '---\ntask_id: %s\nround: %s\nrole: %s\nverdict: %s\n' \
      "$HYPERLOOP_TASK_ID" "$HYPERLOOP_ROUND" "$HYPERLOOP_ROLE" "$1"
    case "${PROPOSALS:-}" in
    "") ;;
    "[]") printf 'tasks: []\n' ;;
    *) printf 'tasks:\n%s\n' "$PROPOSALS" ;;
    esac
    printf -- '---\n%s\n' "$2"
  } > "$HYPERLOOP_RESULT_FILE"
}

case "$HYPERLOOP_ROLE" in
pm)
  # One task per spec the prompt asks about; their headings look like
  # ### `specs/greeting.md@<commit>` (new)
  PROPOSALS=$(printf '%s\n' "$prompt" | sed -n 's/^### `\(specs\/[^@]*\)@.*/\1/p' | sort -u |
    while read -r spec; do
      printf -- '- title: Implement %s\n  spec: %s\n' "$spec" "$spec"
    done)
  if [ -z "$PROPOSALS" ]; then
    PROPOSALS="[]"
  fi
  result pass "Proposed one task per new or changed spec."
  ;;
implementer)
  # Copy every ```file:NAME block of the spec into the worktree.
  printf '%s\n' "$prompt" | awk '
    /^```+file:/ { sub(/^```+file:/, ""); out = $0; next }
    /^```/ && out != "" { close(out); out = ""; next }
    out != "" { print > out }'
  git add -A
  if git diff --cached --quiet; then
    result pass "The files the spec describes are already in place."
  else
    git commit -q -m "Implement $HYPERLOOP_SPEC_REF" \
      -m "Spec-Ref: $HYPERLOOP_SPEC_REF
Task-Ref: $HYPERLOOP_TASK_ID"
    result pass "Created the files the spec describes."
  fi
  ;;
verifier)
  if git diff --quiet "$HYPERLOOP_BASE_BRANCH"...HEAD; then
    result fail "- The branch has no changes against $HYPERLOOP_BASE_BRANCH."
  else
    result pass "The branch adds the files the spec describes."
  fi
  ;;
*)
  result pass "Nothing to do for the $HYPERLOOP_ROLE role in this example."
  ;;
esac
