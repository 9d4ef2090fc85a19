#!/usr/bin/env bash
# `make demo`: the local control plane, and Permafrost at work on it.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
eval "$("$ROOT/hack/cluster.sh" env)"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "The local control plane (kube-apiserver $(kubectl version -o json | sed -nE 's/.*"gitVersion": "([^"]+)".*/\1/p' | tail -1), kwok nodes)"
kubectl get nodes -o wide
