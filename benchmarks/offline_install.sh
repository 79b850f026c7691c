#!/usr/bin/env bash
# Installs archspec and the wheels in .whl/ (built by `make gpu-wheels` on a machine with network) into
# /tmp/site (or $ARCHSPEC_SITE) on a GPU machine that has torch, triton and lightning but no network, and
# exports PYTHONPATH. Use from the repository root:  source benchmarks/offline_install.sh
# Then e.g.  python3 benchmarks/ssd_kernels.py --quick
# Triton compiles into $TRITON_CACHE_DIR (default /tmp/triton-cache), seeded from .tcache/triton-cache.txz.* (or
# .tgz.*) when those were carried; `archspec_keep_triton_cache` at the end of a command writes the cache to $OUT as
# triton-cache.txz.00, .01, ... (xz, or gzip where there is no xz: .tgz; pieces of 15 MiB, as a file from $OUT may
# have 16), to be moved to .tcache/ here and carried by the next call, whose unchanged kernels then skip compiling.
# xz matters: after the 77 GPU tests the cache took over 45 MiB gzipped, and a 277 MB cache 39.5 MB gzipped and
# 19.1 MB as xz -6.
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
    export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/triton-cache}
    if ls .tcache/triton-cache.txz.* >/dev/null 2>&1; then
        mkdir -p "$TRITON_CACHE_DIR" && cat .tcache/triton-cache.txz.* | xz -dc | tar -xf - -C "$TRITON_CACHE_DIR" \
            || return 1
    elif ls .tcache/triton-cache.tgz.* >/dev/null 2>&1; then
        mkdir -p "$TRITON_CACHE_DIR" && cat .tcache/triton-cache.tgz.* | tar -xzf - -C "$TRITON_CACHE_DIR" || return 1
    fi
}

archspec_keep_triton_cache() {
    local out=${OUT:?archspec_keep_triton_cache: OUT is not set}
    local pieces=3  # of the 8 files and 64 MiB that may come back from $OUT
    [ -d "$TRITON_CACHE_DIR" ] || return 0
    rm -f "$out"/triton-cache.t?z.*
    local name=tgz compress="gzip -c"
    if command -v xz >/dev/null 2>&1; then name=txz compress="xz -6 -T0 -c"; fi
    tar -cf - -C "$TRITON_CACHE_DIR" . | $compress | split -b 15M -d -a 2 - "$out/triton-cache.$name." || return 1
    if [ "$(ls "$out"/triton-cache.$name.* | wc -l)" -gt "$pieces" ]; then
        echo "archspec_keep_triton_cache: the cache is over $pieces pieces of 15 MiB, not kept" >&2
        rm -f "$out"/triton-cache.$name.*
    fi
}
_archspec_offline_install
