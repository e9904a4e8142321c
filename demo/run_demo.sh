#!/usr/bin/env bash
# `make demo`: a small speaker database built from scratch with the bundled GE2E model.
#
# The speech is SYNTHETIC: four voices of the flite speech synthesiser (Debian package
# "flite", installed here when missing), because real recordings cannot be shipped with the
# code. awb, rms and slt are enrolled; kal is never enrolled and must come out unknown.
set -euo pipefail
cd "$(dirname "$0")/.."
SPEAKERDB="${SPEAKERDB:-.venv/bin/speakerdb}"
OUT="${DEMO_DIR:-demo-output}"

if ! command -v flite >/dev/null 2>&1; then
    echo "== installing the flite speech synthesiser (Debian package) to make demo voices"
    if [ "$(id -u)" = 0 ]; then
        apt-get install -y -q flite >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q flite >/dev/null; }
    elif command -v sudo >/dev/null 2>&1; then
        sudo apt-get install -y -q flite >/dev/null || { sudo apt-get update -q >/dev/null && sudo apt-get install -y -q flite >/dev/null; }
    else
        echo "error: flite is missing; install it (apt-get install flite) and run make demo again" >&2
        exit 2
    fi
fi

rm -rf "$OUT"
mkdir -p "$OUT/audio"
DB="$OUT/demo.sqlite"
SENTENCES=(
    "The quick brown fox jumps over the lazy dog near the river bank."
    "Please call Stella and ask her to bring these things with her from the store."
    "Six spoons of fresh snow peas, five thick slabs of blue cheese, and maybe a snack for her brother Bob."
    "We also need a small plastic snake and a big toy frog for the kids."
    "She can scoop these things into three red bags, and we will go meet her Wednesday at the train station."
)
echo "== synthesising speech (synthetic voices: flite awb, rms, slt, kal)"
for voice in awb rms slt kal; do
    for i in 0 1 2 3 4; do
        flite -voice "$voice" -t "${SENTENCES[$i]}" -o "$OUT/audio/${voice}_$i.wav"
    done
done
A="$OUT/audio"

run() {  # show the command, run it, show its exit status (0 yes, 1 no, 2 error)
    echo
    echo "\$ speakerdb $*"
    set +e
    "$SPEAKERDB" "$@"
    local status=$?
    set -e
    echo "(exit status $status)"
}

echo
echo "== enrolling three synthetic speakers from three recordings each, into $DB"
for voice in awb rms slt; do
    run enroll "$voice" "$A/${voice}_0.wav" "$A/${voice}_1.wav" "$A/${voice}_2.wav" --db "$DB"
done
run speakers list --db "$DB"

echo
echo "== verification: is this recording the enrolled speaker?"
run verify awb "$A/awb_3.wav" --db "$DB"
run verify awb "$A/rms_3.wav" --db "$DB"

echo
echo "== comparison of two recordings, no database needed"
run compare "$A/slt_3.wav" "$A/slt_4.wav"
run compare "$A/slt_3.wav" "$A/rms_4.wav"

echo
echo "== identification among everyone enrolled (kal was never enrolled: unknown)"
run identify "$A/rms_4.wav" "$A/slt_4.wav" "$A/kal_3.wav" --top-k 3 --db "$DB"
run identify "$A/kal_4.wav" --db "$DB" --json

echo
echo "== the database is consistent"
run db check --db "$DB"
