#!/usr/bin/env bash
# The end-to-end demo on the bundled examples: sets itself up (a virtualenv in .venv), then
# creates a demo vault in ./demo, runs the daemon on temporary inbox folders, drops the sample
# documents in, syncs to a folder standing in for the USB drive, restores one patient, recovers
# everything from the "drive" with the recovery key alone, and shows a purge dry run.
# Everything stays in ./demo (delete it to start again). Nothing leaves this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
if [ ! -x .venv/bin/coldvault ]; then
    echo "== setting up .venv"
    python3 -m venv .venv
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -e .
fi
CV="$ROOT/.venv/bin/coldvault"
D="$ROOT/demo"
rm -rf "$D"
mkdir -p "$D/inbox/scanner" "$D/inbox/exports" "$D/drive-A" "$D/drive-B"
printf 'demo passphrase, do not use for real\n' > "$D/passphrase"
chmod 600 "$D/passphrase"
export COLDVAULT_CONFIG="$D/coldvault.toml"
export COLDVAULT_PASSPHRASE_FILE="$D/passphrase"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "coldvault init (post-quantum vault)"
$CV init --state-dir "$D/state" | tee "$D/init.txt"
grep -o 'AGE-SECRET-KEY-[A-Z0-9-]*' "$D/init.txt" > "$D/recovery-key.txt"
FINGERPRINT=$(grep -A2 'SIGNING KEY FINGERPRINT' "$D/init.txt" | tail -1 | tr -d ' ')

step "adding the watched folders to the configuration"
cat >> "$D/coldvault.toml" <<TOML
quiet_seconds = 1
rescan_interval = 5

[[source]]
name = "scanner"
path = "$D/inbox/scanner"
pattern = '^(?P<patient>[0-9]+)_(?P<date>[0-9]{8})'
kind = "scan"

[[source]]
name = "exports"
path = "$D/inbox/exports"
per_patient_folders = true
kind = "export"
TOML
# The two lines above belong to [vault]: move them there (TOML tables end where the next begins).
python3 - "$D/coldvault.toml" <<'PY'
import sys
p = sys.argv[1]
text = open(p).read()
extra = "quiet_seconds = 1\nrescan_interval = 5\n"
text = text.replace(extra, "")
text = text.replace("[vault]\n", "[vault]\n" + extra, 1)
open(p, "w").write(text)
PY

step "starting the daemon"
$CV daemon 2> "$D/daemon.log" &
DAEMON=$!
trap 'kill $DAEMON 2>/dev/null || true' EXIT
sleep 1

step "the scanner and the practice software drop documents"
cp examples/documents/scanner/*.pdf "$D/inbox/scanner/"
cp examples/documents/unsorted-scan.pdf "$D/inbox/scanner/"
cp -r examples/documents/exports/* "$D/inbox/exports/"
expected=$(( $(ls examples/documents/scanner | wc -l) + 1 + $(find examples/documents/exports -type f | wc -l) ))
for _ in $(seq 60); do
    n=$($CV status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["documents"])')
    [ "$n" -ge "$expected" ] && break
    sleep 1
done
$CV status
step "coldvault ls (no passphrase: ids, dates, sizes, where the copies are)"
$CV ls
$CV ls 000417

step "enrolling two drives (folders standing in for USB sticks) and syncing"
$CV drive enroll "$D/drive-A" --name Cle-A
$CV drive enroll "$D/drive-B" --name Cle-B
$CV drive sync Cle-A
$CV drive sync Cle-B
$CV drive list

step "stopping the daemon (SIGTERM: it finishes the current file and exits)"
kill -TERM $DAEMON; wait $DAEMON || true; trap - EXIT
tail -3 "$D/daemon.log"

step "restore: a patient asks for their file"
$CV restore 000417 --to "$D/restored" --reason "demande du patient (L1111-7)"
ls -l "$D/restored/000417"

step "verify the drives (no passphrase needed)"
$CV verify

step "disaster: the workstation is lost; recover from one drive and the paper recovery key"
$CV recover --drive "$D/drive-A" --to "$D/recovered" \
    --recovery-key-file "$D/recovery-key.txt" --fingerprint "$FINGERPRINT"
find "$D/recovered" -type f | sort

if $CV --help | grep -q purge; then
    step "retention: patient facts, then the yearly purge as a dry run (as of 2045)"
    $CV patient import examples/documents/patients.csv
    $CV purge --as-of 2045-06-01
fi

step "the audit journal"
$CV audit --verify | tail -5
echo
echo "Demo finished. Everything is in $D."
