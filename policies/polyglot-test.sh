#!/usr/bin/env bash
# Builds the example policies written in other languages and runs their cases on arp-host:
#   policies/polyglot-test.sh [python] [js]        (default: both)
# ARP_HOST_BIN: the arp-host binary (default target/release/arp-host, relative to the
#   repository root unless absolute).
# POLYGLOT_OUT: where the components go (default target/polyglot).
# Each policy's build.sh installs its own toolchain (a venv, node_modules) on first use, so
# this needs python3, node and npm, and the PyPI and npm registries the first time.
# Exits non-zero if any build fails or any case fails.
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${ARP_HOST_BIN:-target/release/arp-host}"
[[ "$bin" == /* ]] || bin="$root/$bin"
out="${POLYGLOT_OUT:-$root/target/polyglot}"
[[ "$out" == /* ]] || out="$root/$out"

if [[ ! -x "$bin" ]]; then
    echo "polyglot-test: no arp-host binary at $bin (build it, or set ARP_HOST_BIN)" >&2
    exit 2
fi

languages=("$@")
[[ ${#languages[@]} -gt 0 ]] || languages=(python js)

failed=()
for language in "${languages[@]}"; do
    case "$language" in
        python) name=python-scopes ;;
        js) name=js-scopes ;;
        *)
            echo "polyglot-test: unknown language '$language' (python, js)" >&2
            exit 2
            ;;
    esac
    dir="$root/policies/$name"
    echo "== $name: build" >&2
    started=$SECONDS
    if ! "$dir/build.sh" "$out"; then
        echo "== $name: BUILD FAILED" >&2
        failed+=("$name (build)")
        continue
    fi
    echo "== $name: built in $((SECONDS - started)) s, $(wc -c < "$out/$name.wasm") bytes" >&2
    echo "== $name: arp-host policy test" >&2
    if ! "$bin" policy test "$out/$name.wasm" "$dir/cases.yaml"; then
        echo "== $name: TESTS FAILED" >&2
        failed+=("$name (cases)")
    fi
done

if [[ ${#failed[@]} -gt 0 ]]; then
    echo "polyglot-test: FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "polyglot-test: all passed (${languages[*]})" >&2
