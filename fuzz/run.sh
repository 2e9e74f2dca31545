#!/usr/bin/env bash
# Runs every fuzz target for a bounded time and prints the executions of each (RELIABILITY.md).
#
#   fuzz/run.sh                       # every target, 60 s each
#   FUZZ_SECONDS=300 fuzz/run.sh      # longer
#   fuzz/run.sh cache_hit autopath    # some targets
#
# Environment: FUZZ_SECONDS (per target, default 60), FUZZ_SANITIZER (default none: the code under
# test is safe Rust, and debug assertions and overflow checks stay on; `address` finds memory
# errors in dependencies' unsafe code at about half the speed), FUZZ_TOOLCHAIN (default nightly),
# FUZZ_JOBS (libFuzzer -jobs/-workers, default 1).
#
# Each target starts from its committed seeds (fuzz/seeds/<target>, written by gen_seeds.py) and
# the corpus grown by earlier runs (fuzz/corpus/<target>, not committed). A crash stops that
# target, leaves its input in fuzz/artifacts/<target>/ and makes the script exit 1 after the
# others have run; reproduce with `cargo +nightly fuzz run <target> <artifact>`. Logs go to
# fuzz/logs/. The fuzz crate is its own workspace (fuzz/Cargo.toml), built into fuzz/target.
set -uo pipefail
cd "$(dirname "$0")"

seconds=${FUZZ_SECONDS:-60}
sanitizer=${FUZZ_SANITIZER:-none}
toolchain=${FUZZ_TOOLCHAIN:-nightly}
jobs=${FUZZ_JOBS:-1}

if [ -x "$HOME/.cargo/bin/cargo" ] && ! command -v cargo >/dev/null 2>&1; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! rustup run "$toolchain" rustc --version >/dev/null 2>&1; then
  echo "fuzz: the $toolchain toolchain is missing (rustup toolchain install $toolchain)" >&2
  exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked || exit 2
fi

all=$(cargo +"$toolchain" fuzz list)
targets=("$@")
[ ${#targets[@]} -eq 0 ] && mapfile -t targets <<<"$all"

echo "== building ${targets[*]} (sanitizer $sanitizer)"
cargo +"$toolchain" fuzz build -s "$sanitizer" || exit 2

mkdir -p logs
failed=()
total=0
summary=()
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  log="logs/$t.log"
  echo "== $t: ${seconds}s"
  cargo +"$toolchain" fuzz run -s "$sanitizer" "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$seconds" -jobs="$jobs" -workers="$jobs" -print_final_stats=1 \
    -artifact_prefix="artifacts/$t/" >"$log" 2>&1
  rc=$?
  # With -jobs, libFuzzer writes each job's output to fuzz-<n>.log in the working directory.
  rm -f fuzz-*.log
  execs=$(grep -h '^stat::number_of_executed_units' "$log" | awk '{s += $2} END {print s + 0}')
  cov=$(grep -E '^#[0-9]+' "$log" | tail -1 | grep -oE 'cov: [0-9]+' | awk '{print $2}')
  corpus=$(find "corpus/$t" -type f | wc -l)
  status=ok
  if [ $rc -ne 0 ] || grep -qE '^(==[0-9]+== ?ERROR|SUMMARY: libFuzzer)|panicked at' "$log"; then
    status="CRASH (see $log, artifacts/$t/)"
    failed+=("$t")
  fi
  total=$((total + execs))
  summary+=("$(printf '%-16s %12s execs  cov %6s  corpus %5s  %s' "$t" "$execs" "${cov:-?}" "$corpus" "$status")")
done

echo
echo "== fuzz summary (${seconds}s per target, sanitizer $sanitizer)"
printf '%s\n' "${summary[@]}"
echo "total executions: $total"
if [ ${#failed[@]} -gt 0 ]; then
  echo "crashed: ${failed[*]}"
  exit 1
fi
