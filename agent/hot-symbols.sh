#!/bin/bash
# Regenerates agent/hot-symbols.txt: the functions of the release
# `hostpulse-agent` that run when `serve` starts, answers scrapes of the
# node-exporter fixture and shuts down, then those that `run` adds when it
# streams the same fixture to a collector for a few cycles, as recorded by
# valgrind's callgrind (serve's first, so its code stays in one block).
# build.rs hands the list to the linker (lld `--symbol-ordering-file`), which
# puts those functions next to each other at the start of .text, so the pages
# of code the agent touches are few and contiguous instead of spread over the
# whole binary. Names that no longer exist are skipped by the linker, so a
# stale list only loses some of the benefit. Symbol names carry a hash that
# changes with the toolchain, a dependency's version, and edits to the item's
# module (editing three agent modules renamed 25 of 1,066), so rerun after
# any of those that touches the sampler, emitter, sources or serve path:
#
#   cargo build --release -p hostpulse-agent && agent/hot-symbols.sh
#
# Needs valgrind, curl, python3, ../shared/fixtures/node-exporter and a
# collector binary (COLLECTOR, default target/release/hostpulse-collector;
# any profile will do, only the agent's symbols are recorded).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/hostpulse-agent}
collector=${COLLECTOR:-target/release/hostpulse-collector}
fixture=${FIXTURE:-../shared/fixtures/node-exporter}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
port=19999

# The fixture stores symlinks as small files naming their target; restore them.
python3 - "$fixture/sys" "$work/sys" <<'EOF'
import os, sys
src, dst = sys.argv[1], sys.argv[2]
for root, dirs, files in os.walk(src):
    d = os.path.join(dst, os.path.relpath(root, src))
    os.makedirs(d, exist_ok=True)
    for name in [n for n in dirs if os.path.islink(os.path.join(root, n))]:
        os.symlink(os.readlink(os.path.join(root, name)), os.path.join(d, name))
        dirs.remove(name)
    for name in files:
        p, q = os.path.join(root, name), os.path.join(d, name)
        if os.path.islink(p):
            os.symlink(os.readlink(p), q)
            continue
        data = open(p, "rb").read()
        text = data.decode(errors="replace").rstrip()
        if len(data) < 512 and (text == ".." or text.startswith("../")) and not any(c.isspace() for c in text):
            os.symlink(text, q)
        else:
            open(q, "wb").write(data)
EOF
mkdir -p "$work/root" "$work/smart"
: >"$work/kmsg"

valgrind --tool=callgrind --demangle=no --callgrind-out-file="$work/callgrind.out" \
    "$bin" serve --listen "127.0.0.1:$port" --sysfs "$work/sys" --procfs "$fixture/proc" \
    --udev-data "$fixture/udev/data" --rootfs "$work/root" --kmsg "$work/kmsg" \
    --smartctl-json-dir "$work/smart" >/dev/null 2>"$work/valgrind.log" &
vg=$!
for _ in $(seq 120); do
    curl -sf -m 10 "127.0.0.1:$port/metrics" -o /dev/null && break
    sleep 1
done
for _ in 1 2 3; do
    # Past serve's one-second reuse window, so every scrape samples.
    sleep 1.1
    curl -sf -m 30 "127.0.0.1:$port/metrics" -o /dev/null
done
curl -s -m 30 "127.0.0.1:$port/" -o /dev/null
curl -s -m 30 "127.0.0.1:$port/missing" -o /dev/null
kill -TERM "$vg"
wait "$vg" || true

# `run`: stream to a collector until it has stored three cycles.
mkdir -p "$work/data" "$work/spool" "$work/state"
"$collector" --data-dir "$work/data" --http-addr "127.0.0.1:$((port - 1))" \
    --grpc-addr "127.0.0.1:$((port - 2))" >"$work/collector.log" 2>&1 &
coll=$!
valgrind --tool=callgrind --demangle=no --callgrind-out-file="$work/callgrind-run.out" \
    "$bin" run --collector "http://127.0.0.1:$((port - 2))" --interval 1s \
    --spool-dir "$work/spool" --state-dir "$work/state" --sysfs "$work/sys" \
    --procfs "$fixture/proc" --udev-data "$fixture/udev/data" --rootfs "$work/root" \
    --kmsg "$work/kmsg" --smartctl-json-dir "$work/smart" >/dev/null 2>"$work/valgrind-run.log" &
vg=$!
query="127.0.0.1:$((port - 1))/api/v1/query?query=count_over_time(node_load1%5B10m%5D)"
for _ in $(seq 120); do
    # Polls until the collector holds samples of three distinct cycles.
    curl -s -m 10 "$query" | grep -Eq '"[3-9]"|"[1-9][0-9]+"' && break
    sleep 1
done
kill -TERM "$vg"
wait "$vg" || true
kill -TERM "$coll"
wait "$coll" || true

python3 - "$work/callgrind.out" "$work/callgrind-run.out" "$bin" agent/hot-symbols.txt <<'EOF'
import re, subprocess, sys
serve_out, run_out, binary, target = sys.argv[1:]
nm = subprocess.run(["nm", "--defined-only", binary], capture_output=True, text=True, check=True).stdout
defined = {p[2] for p in (l.split() for l in nm.splitlines()) if len(p) == 3 and p[1] in "tTwW"}

def ran(path):
    names = set()
    for line in open(path):
        m = re.match(r"c?fn=\(\d+\) (.*)", line)
        if m:
            names.add(m.group(1).strip())
    return names & defined

serve = ran(serve_out)
run = ran(run_out) - serve
with open(target, "w") as f:
    f.write("# Functions `hostpulse-agent serve` runs, then those `run` adds (generated by\n")
    f.write("# agent/hot-symbols.sh; see build.rs).\n")
    f.write("\n".join(sorted(serve) + sorted(run)) + "\n")
print(f"{len(serve)} + {len(run)} functions written to {target}")
EOF
