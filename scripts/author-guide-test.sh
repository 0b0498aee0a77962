#!/usr/bin/env bash
# Follows docs/policy-authors.md word for word: its ```sh blocks are run in order, its
# ```<lang> file=<path> blocks are written to <path>, in one shell, in a new temporary
# directory that holds the crate next to an `arp-host` link to this checkout (as the guide
# assumes). ```text blocks are not run. Fails if any step fails.
#   scripts/author-guide-test.sh
# ARP_HOST_BIN: the arp-host binary (default target/debug/arp-host, relative to the
#   repository root unless absolute); its directory is put first on PATH.
# KEEP=1 keeps the temporary directory.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
guide="$root/docs/policy-authors.md"
bin="${ARP_HOST_BIN:-target/debug/arp-host}"
[[ "$bin" == /* ]] || bin="$root/$bin"
if [[ ! -x "$bin" ]]; then
    echo "author-guide-test: no arp-host binary at $bin (build it, or set ARP_HOST_BIN)" >&2
    exit 2
fi

work="$(mktemp -d)"
if [[ "${KEEP:-}" != 1 ]]; then
    trap 'rm -rf "$work"' EXIT
fi
ln -s "$root" "$work/arp-host"
mkdir -p "$work/bin"
ln -s "$bin" "$work/bin/arp-host"

# The guide as a script: each file block becomes a quoted here-document, each sh block
# runs as is; a comment names the block's line in the guide.
steps="$work/steps.sh"
awk '
    /^```/ {
        if (inside) {
            if (mode == "file") print "ARP_GUIDE_EOF"
            inside = 0
            next
        }
        inside = 1
        info = substr($0, 4)
        mode = "skip"
        if (match(info, /file=[^ ]+/)) {
            path = substr(info, RSTART + 5, RLENGTH - 5)
            print "echo \"== guide line " NR ": write " path "\" >&2"
            print "cat > \"" path "\" <<'"'"'ARP_GUIDE_EOF'"'"'"
            mode = "file"
        } else if (info == "sh") {
            print "echo \"== guide line " NR ": run\" >&2"
            mode = "sh"
        }
        next
    }
    inside && mode != "skip" { print }
    END { if (inside) { print "echo \"unterminated block in the guide\" >&2; exit 1" } }
' "$guide" > "$steps"

if ! grep -q 'file=src/lib.rs' "$guide" || ! grep -q '^cargo new' "$guide"; then
    echo "author-guide-test: the guide has no cargo new step or no src/lib.rs block" >&2
    exit 1
fi

cd "$work"
# The crate lives outside the checkout: the default toolchain builds it, as it would for
# an author. The checkout's target dir is not touched.
export PATH="$work/bin:$PATH"
unset CARGO_TARGET_DIR
if bash -x -euo pipefail "$steps"; then
    echo "author-guide-test: every step of docs/policy-authors.md passed" >&2
else
    status=$?
    echo "author-guide-test: FAILED (steps: $steps${KEEP:+, kept})" >&2
    exit "$status"
fi
