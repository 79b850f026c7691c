#!/usr/bin/env bash
# Runs the tests marked `gpu` on a CUDA machine without network, in parallel worker processes (Triton's compiles
# dominate: one process took over 7 minutes for the 77 tests on an H200 with triton 3.6), and prints a table of
# outcomes per test file last. From the repository root, with .whl carried (`make gpu-wheels`):
#   bash benchmarks/gpu_tests.sh [pytest arguments; paths relative to the repository root]
# e.g. bash benchmarks/gpu_tests.sh tests/kernels/test_triton_ssd.py -k segments
# ARCHSPEC_GPU_TEST_WORKERS sets the number of workers (default 8; 0 runs in this process). The JUnit report goes
# to $OUT/gpu_tests.xml (or /tmp), with the Triton cache (offline_install.sh) when $OUT is set. Exits with pytest's
# status.
set -u
source benchmarks/offline_install.sh || exit 1
root=$PWD
report=${OUT:-/tmp}/gpu_tests.xml
args=()
for arg in "$@"; do
    if [[ $arg != -* && -e $root/${arg%%::*} ]]; then args+=("$root/$arg"); else args+=("$arg"); fi
done
[[ ${#args[@]} -eq 0 || ${args[0]} == -* ]] && args=("$root/tests" "${args[@]}")
workers=${ARCHSPEC_GPU_TEST_WORKERS:-8}
parallel=()
if [[ $workers != 0 ]] && python3 -c "import xdist" 2>/dev/null; then parallel=(-n "$workers"); fi
# From /tmp, so that archspec is imported from the installed site, not from the source tree.
(cd /tmp && python3 -m pytest -q -m gpu -c "$root/pyproject.toml" --rootdir "$root" --junitxml "$report" \
    -o junit_logging=system-out \
    "${parallel[@]}" "${args[@]}")
status=$?
[[ -n ${OUT:-} ]] && archspec_keep_triton_cache
python3 - "$report" "$root" <<'EOF'
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict

counts = defaultdict(lambda: {"passed": 0, "failed": 0, "skipped": 0, "seconds": 0.0})
for case in ET.parse(sys.argv[1]).iter("testcase"):
    row = counts[case.get("classname", "?").replace(".", "/") + ".py"]
    outcome = "failed" if case.find("failure") is not None or case.find("error") is not None else (
        "skipped" if case.find("skipped") is not None else "passed")
    if outcome == "failed":  # with what it printed (the seeds of its random inputs), to rerun it as it ran
        problem = case.find("failure") if case.find("failure") is not None else case.find("error")
        printed = case.findtext("system-out") or ""
        print(f"FAILED {case.get('name')}: {problem.get('message', '').splitlines()[0] if problem.get('message') else ''}")
        print("  printed: " + " ".join(printed.split()[-6:]))
    row[outcome] += 1
    row["seconds"] += float(case.get("time", 0.0))
print("| test file | passed | failed | skipped | seconds (summed over workers) |")
print("| --- | --- | --- | --- | --- |")
for name, row in sorted(counts.items()):
    print(f"| {name} | {row['passed']} | {row['failed']} | {row['skipped']} | {row['seconds']:.1f} |")
EOF
exit $status
