#!/usr/bin/env bash
# An environment for benchmarks/peers.py: mtlkit's .venv (made by `make setup`) plus tasknet and
# LibMTL, in .mtlkit_cache/peers-venv. The peers are not mtlkit dependencies: this environment
# sees .venv's packages through a .pth file and adds benchmarks/peers-requirements.txt with
# --no-deps, so torch, transformers and datasets are exactly mtlkit's pinned versions.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.mtlkit_cache/peers-venv"
main_site="$("$root/.venv/bin/python" -c 'import site; print(site.getsitepackages()[0])')"
test -x "$venv/bin/python" || "$root/.venv/bin/python" -m venv --without-pip "$venv"
site_dir="$("$venv/bin/python" -c 'import site; print(site.getsitepackages()[0])')"
echo "$main_site" > "$site_dir/mtlkit-main-venv.pth"
# seqeval builds from an sdist: pin the setuptools_scm its setup_requires fetches
export PIP_CONSTRAINT="$root/benchmarks/peers-build-constraints.txt"
"$root/.venv/bin/python" -m pip --python "$venv/bin/python" install --no-deps \
    -r "$root/benchmarks/peers-requirements.txt" 2>/dev/null \
  || "$root/.venv/bin/python" -m pip install --no-deps --target "$site_dir" \
    -r "$root/benchmarks/peers-requirements.txt"
"$venv/bin/python" -c 'import importlib.metadata as m; print("tasknet", m.version("tasknet"), "LibMTL", m.version("LibMTL"))'
