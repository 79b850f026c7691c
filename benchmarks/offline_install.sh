#!/usr/bin/env bash
# Installs archspec and the wheels in .whl/ (built by `make gpu-wheels` on a machine with network) into
# /tmp/site (or $ARCHSPEC_SITE) on a GPU machine that has torch, triton and lightning but no network, and
# exports PYTHONPATH. Use from the repository root:  source benchmarks/offline_install.sh
# Then e.g.  python3 benchmarks/ssd_kernels.py --quick
_archspec_offline_install() {
    local site=${ARCHSPEC_SITE:-/tmp/site}
    if ! ls .whl/*.whl >/dev/null 2>&1; then
        echo "offline_install.sh: no wheels in $(pwd)/.whl (run 'make gpu-wheels' where there is network," \
             "and carry .whl)" >&2
        return 1
    fi
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
        .whl/*.whl || return 1
    python3 -m pip install -q --no-index --no-deps --no-build-isolation --upgrade --target "$site" . || return 1
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
}
_archspec_offline_install
