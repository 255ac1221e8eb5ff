#!/usr/bin/env bash
# Runs every test: unit tests, and integration tests that drive the kubestrap
# binary against loopback servers, the stand-in localkube and the real kubectl.
set -euo pipefail
cd "$(dirname "$0")/.."
# Integration tests run the stand-in localkube binary: build every binary first.
cargo build --workspace --bins --quiet
cargo test --workspace --quiet "$@"
