#!/usr/bin/env bash
# The README's test command: installs what the tests need when it is missing, then runs every
# test (`cargo test --workspace`, extra arguments passed on). Idempotent and quiet when all is
# there.
#
# It installs:
#   - Debian packages (apt-get, when run as root; otherwise it names them and stops):
#     chromium (browser tests).
#   - npm packages into target/ caches: the pinned playwright-core (browser tests) and the
#     mydog 2.3.0 peer's node_modules (mydog comparison, benchmark smoke test).
# KENNEL_SKIP_BROWSER=1 skips the browser tests and what they need; KENNEL_SKIP_MYDOG=1 the
# mydog comparison's npm install.
set -euo pipefail
cd "$(dirname "$0")"

debs=()
[ "${KENNEL_SKIP_BROWSER:-}" = 1 ] || [ -x /usr/bin/chromium ] || debs+=(chromium)

if [ ${#debs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test.sh: installing Debian packages: ${debs[*]}"
    log=$(mktemp)
    export DEBIAN_FRONTEND=noninteractive
    # A fresh machine's package lists may be empty or stale: update them only when needed.
    if ! apt-get install -y -qq "${debs[@]}" >"$log" 2>&1; then
      { apt-get update -qq && apt-get install -y -qq "${debs[@]}"; } >"$log" 2>&1 \
        || { cat "$log" >&2; echo "test.sh: cannot install ${debs[*]}" >&2; exit 1; }
    fi
    rm -f "$log"
  else
    echo "test.sh: missing Debian packages: ${debs[*]}" >&2
    echo "  install them: sudo apt-get install -y ${debs[*]}" >&2
    echo "  or skip what needs them: KENNEL_SKIP_BROWSER=1 ./test.sh" >&2
    exit 1
  fi
fi

# npm caches (the layout is the tests' own, so the Rust side fills them).
cargo run -q -p integration-tests --bin test-deps

cargo test --workspace "$@"
