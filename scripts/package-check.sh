#!/usr/bin/env bash
# Checks the published crates as crates.io would hold them: packages every member that is not
# `publish = false`, unpacks the .crate files outside the repository, and runs each one's own
# tests from the packaged files alone, against the other packaged crates (a scratch workspace
# whose [patch.crates-io] points each crate name at its unpacked copy), first with
# --all-features, then with the default features (a test or example that needs a feature must
# say so with `required-features`; the path-only self dev-dependencies that turn features on in
# this workspace are stripped from a package). Last, it builds their docs as docs.rs does
# (all features, `--cfg docsrs`, nightly-only doc attributes through RUSTC_BOOTSTRAP=1, in a
# target directory of its own).
#
# Usage: scripts/package-check.sh [scratch dir, default /tmp/pkgcheck]
# Needs: cargo, python3, tar; the registry crates of Cargo.lock (fetched or cached).
# Tests that need redis-server or the interop server skip themselves unless CLIENT_AUTH_REDIS /
# CLIENT_AUTH_INTEROP are set, as in the workspace.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$(pwd)
scratch=${1:-/tmp/pkgcheck}
case "$scratch" in
"$repo" | "$repo"/*)
    echo "the scratch directory must be outside the repository" >&2
    exit 2
    ;;
esac

# name version manifest_dir, one line per publishable member.
mapfile -t crates < <(cargo metadata --format-version 1 --no-deps --locked | python3 -c '
import json, sys
for p in json.load(sys.stdin)["packages"]:
    if p["publish"] != []:
        print(p["name"], p["version"])')
target_dir=$(cargo metadata --format-version 1 --no-deps --locked |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')

package_args=()
for line in "${crates[@]}"; do
    package_args+=(-p "${line%% *}")
done
echo "=== cargo package ${package_args[*]}"
cargo package --locked --allow-dirty --no-verify "${package_args[@]}"

rm -rf "$scratch/crates"
mkdir -p "$scratch/crates"
members=()
patches=()
for line in "${crates[@]}"; do
    name=${line%% *}
    version=${line##* }
    # --touch: a .crate carries fixed modification times, and cargo tells a path dependency's
    # changes by them; without it, a second run would test the first run's builds.
    tar -xzf "$target_dir/package/$name-$version.crate" -C "$scratch/crates" --touch
    members+=("    \"crates/$name-$version\",")
    patches+=("$name = { path = \"crates/$name-$version\" }")
done

{
    echo "# Written by scripts/package-check.sh: the packaged crates, as crates.io would hold them."
    echo "[workspace]"
    echo "resolver = \"3\""
    echo "members = ["
    printf '%s\n' "${members[@]}"
    echo "]"
    echo
    echo "[patch.crates-io]"
    printf '%s\n' "${patches[@]}"
    echo
    echo "[profile.dev]"
    echo "debug = \"line-tables-only\""
    echo
    echo "[profile.dev.package.\"*\"]"
    echo "debug = false"
} >"$scratch/Cargo.toml"
# The repository's versions of the registry crates; cargo drops the unpublished members.
cp Cargo.lock "$scratch/Cargo.lock"

export CARGO_TARGET_DIR="$scratch/target"
cd "$scratch"
failed=()
for line in "${crates[@]}"; do
    name=${line%% *}
    echo "=== $name: cargo test --all-features (packaged)"
    cargo test -p "$name" --all-features --no-fail-fast || failed+=("cargo test -p $name --all-features")
    echo "=== $name: cargo test (packaged, default features)"
    cargo test -p "$name" --no-fail-fast || failed+=("cargo test -p $name")
done
echo "=== docs as docs.rs builds them"
RUSTC_BOOTSTRAP=1 RUSTDOCFLAGS="--cfg docsrs -D warnings" CARGO_TARGET_DIR="$scratch/target-docsrs" \
    cargo doc --no-deps --all-features "${package_args[@]}" || failed+=("docs (--cfg docsrs)")

echo
if [ "${#failed[@]}" -gt 0 ]; then
    printf 'package check FAILED:\n' >&2
    printf '  %s\n' "${failed[@]}" >&2
    exit 1
fi
echo "package check passed: ${#crates[@]} crates; tests with all features and with the default ones; docs"
