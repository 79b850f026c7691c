#!/usr/bin/env bash
# Installs archspec and the wheels in .whl/ (built by `make gpu-wheels` on a machine with network) into
# /tmp/site on a GPU machine that has torch, triton and lightning but no network, and exports PYTHONPATH.
# Use from the repository root:  source benchmarks/offline_install.sh
# Then e.g.  python3 benchmarks/ssd_kernels.py --quick   or   (cd /tmp && python3 -m pytest -m gpu -c $OLDPWD/pyproject.toml $OLDPWD/tests)
set -e
SITE=${ARCHSPEC_SITE:-/tmp/site}
if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "offline_install.sh: no wheels in $(pwd)/.whl (run 'make gpu-wheels' where there is network, and carry .whl)" >&2
    return 1 2>/dev/null || exit 1
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
python3 -m pip install -q --no-index --no-deps --no-build-isolation --upgrade --target "$SITE" .
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
set +e
