#!/usr/bin/env bash
# cryo demo: start a program, checkpoint it, kill it, restart it, watch it go on from the
# line where it stopped.
set -euo pipefail
work=$(mktemp -d /tmp/cryo-demo.XXXXXX)
here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-python3}
cleanup() { [ -n "${pid:-}" ] && kill -9 "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
step() { sed -n "${1}s/^step *\([0-9]*\).*/\1/p" "$work/job.log"; }

echo "== start a job with 'cryo run'"
pid=$($py -m cryo run --output "$work/job.out" -- "$py" "$here/counter.py" "$work/job.log")
echo "   pid $pid"
sleep 1
echo "== its log so far:"
tail -n 3 "$work/job.log" | sed 's/^/   /'

echo "== cryo checkpoint $pid -D $work/image --kill"
$py -m cryo checkpoint "$pid" -D "$work/image" --kill
sleep 0.3
if kill -0 "$pid" 2>/dev/null && ! grep -q '^State:.Z' "/proc/$pid/status"; then
    echo "   the job is still running?"; exit 1
fi
stopped=$(wc -l < "$work/job.log")
echo "   the job is gone; its last line: $(tail -n 1 "$work/job.log")"

echo "== cryo show $work/image (first lines)"
$py -m cryo show "$work/image" | head -n 4 | sed 's/^/   /'

new=""  # a restart takes the job's old pid back, or fails: unless --new-pids
if grep -q '^State:.Z' "/proc/$pid/status" 2>/dev/null; then
    echo "   (its pid is still held by its zombie: this machine's init does not reap"
    echo "   orphans; so the restart is told it may take a new pid, --new-pids)"
    new=--new-pids
fi
echo "== cryo restart -D $work/image --detach $new"
pid=$($py -m cryo restart -D "$work/image" --detach $new)
echo "   restarted as pid $pid"
for _ in $(seq 50); do  # until it has written three more lines (at most 5 s)
    [ "$(wc -l < "$work/job.log")" -ge $((stopped + 3)) ] && break
    sleep 0.1
done
echo "== the job went on from the line where it stopped:"
sed -n "${stopped},$((stopped + 3))p" "$work/job.log" | sed 's/^/   /'
before=$(step "$stopped") after=$(step $((stopped + 1)))
if [ -z "$after" ] || [ "$after" -ne $((before + 1)) ]; then
    echo "   step $before was followed by '${after:-nothing}'?"; exit 1
fi
echo "   (step $before, then step $after: nothing lost, nothing done twice)"
kill -9 "$pid"
echo "== demo done"
