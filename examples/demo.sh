#!/usr/bin/env bash
# cryo demo: start a program, checkpoint it, kill it, restart it, watch it go on.
set -euo pipefail
work=$(mktemp -d /tmp/cryo-demo.XXXXXX)
here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-python3}
cleanup() { [ -n "${pid:-}" ] && kill -9 "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

echo "== start a job with 'cryo run'"
pid=$($py -m cryo run --output "$work/job.out" -- "$py" "$here/counter.py" "$work/job.log")
echo "   pid $pid"
sleep 2
echo "== its log so far:"
tail -n 3 "$work/job.log" | sed 's/^/   /'

echo "== cryo checkpoint $pid -D $work/image --kill"
$py -m cryo checkpoint "$pid" -D "$work/image" --kill
sleep 0.5
if kill -0 "$pid" 2>/dev/null && ! grep -q '^State:.Z' "/proc/$pid/status"; then
    echo "   the job is still running?"; exit 1
fi
echo "   the job is gone; last line: $(tail -n 1 "$work/job.log")"

echo "== cryo show $work/image (first lines)"
$py -m cryo show "$work/image" | head -n 6 | sed 's/^/   /'

echo "== cryo restart -D $work/image --detach"
pid=$($py -m cryo restart -D "$work/image" --detach)
echo "   restarted as pid $pid"
sleep 1.5
echo "== the job went on where it was:"
tail -n 6 "$work/job.log" | sed 's/^/   /'
kill -9 "$pid"
echo "== demo done"
