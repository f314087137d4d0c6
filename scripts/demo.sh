#!/usr/bin/env bash
# A real export end to end, with no Iterable account: 100,000 sample profiles in SQLite, the built-in sandbox
# (an Iterable-compatible API on localhost, 20 ms per request), two segments sent to two lists, then a second run
# that finds nothing changed and sends nothing. Then, in a terminal, it keeps the daemon, the sandbox and the web
# console running in the foreground, printing the console's address and two sign-ins, until Ctrl-C stops them all
# (DEMO_CONSOLE=0 skips that part; so does a run whose output is not a terminal). The console listens on
# 127.0.0.1:9185, or on the port in DEMO_CONSOLE_PORT. Everything it writes stays in ./demo-state.
set -euo pipefail
cd "$(dirname "$0")/.."

console=1
if [ "${DEMO_CONSOLE:-1}" = 0 ] || ! [ -t 1 ]; then
  console=0
fi
port=${DEMO_CONSOLE_PORT:-9185}
case $port in
  '' | *[!0-9]*)
    echo "DEMO_CONSOLE_PORT=$port is not a port number; give one, e.g. DEMO_CONSOLE_PORT=9186 ./scripts/demo.sh" >&2
    exit 1
    ;;
esac
port_busy() {
  echo "port $port on 127.0.0.1 is in use by another program, so the demo's web console cannot listen there. Choose" \
    "another port with DEMO_CONSOLE_PORT, e.g. DEMO_CONSOLE_PORT=$((port + 1)) ./scripts/demo.sh (or DEMO_CONSOLE=0" \
    "to skip the console)." >&2
}
# Before minutes of building and exporting: the console's port must be free at the end.
if [ "$console" = 1 ] && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
  port_busy
  exit 1
fi

printf '\n\033[1m== Building the release binary (a few minutes the first time)\033[0m\n'
cargo build --release --locked
bin=target/release/segment-exporter
state=demo-state
rm -rf "$state" && mkdir -p "$state"
cat > "$state/config.toml" <<TOML
[store]
path = "$state/store.db"

[iterable]
requests_per_second = 20.0
TOML
export SEGMENT_EXPORTER_CONFIG="$state/config.toml"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Generating 100,000 customer profiles in $state/profiles.db"
"$bin" sample-data "$state/profiles.db" --profiles 100000

step "Starting the Iterable sandbox"
"$bin" sandbox --listen 127.0.0.1:0 --latency 20 >"$state/sandbox.out" 2>"$state/sandbox.log" &
sandbox_pid=$!
trap 'kill $sandbox_pid 2>/dev/null || true' EXIT
url=""
for _ in $(seq 1 100); do
  url=$(sed -n 's/^Iterable sandbox listening on \(http:[^ ]*\)$/\1/p' "$state/sandbox.out" 2>/dev/null || true)
  [ -n "$url" ] && break
  sleep 0.1
done
[ -n "$url" ] || { echo "the sandbox did not start; see $state/sandbox.log" >&2; exit 1; }
echo "sandbox at $url"

step "Adding the connection (the key is read from DEMO_ITERABLE_KEY at each use)"
export DEMO_ITERABLE_KEY=sandbox-key
"$bin" connection add sandbox --api-key-env DEMO_ITERABLE_KEY --base-url "$url" --accept-data-privacy \
  --usable-by contributors

step "Defining two segments and an export"
"$bin" segment add "VIP customers" --source "sqlite:$state/profiles.db" \
  --query "SELECT email, first_name, country, lifetime_value FROM profiles WHERE tier = 'gold'"
"$bin" segment add "Churn risk" --source "sqlite:$state/profiles.db" \
  --query "SELECT email, first_name, country, lifetime_value FROM profiles WHERE churn_risk > 0.8"
"$bin" export add marketing --connection sandbox --segment "VIP customers" --segment "Churn risk" \
  --email-field email --field first_name=firstName --field country --field lifetime_value=lifetimeValue

step "Dry run: the plan, nothing changed"
"$bin" export run marketing --dry-run

step "First run"
"$bin" export run marketing

step "Second run: nothing changed, so nothing is sent"
"$bin" export run marketing

step "The lists in the (sandbox) Iterable project"
"$bin" connection lists sandbox --sizes

step "Run history"
"$bin" runs

if [ "$console" = 0 ]; then
  exit 0
fi

step "The web console: the daemon, the sandbox and the console keep running until Ctrl-C"
cat >> "$state/config.toml" <<TOML

[daemon]
status_listen = "127.0.0.1:$port"
trigger_dir = "$state/triggers"
TOML
admin_password=$(head -c 12 /dev/urandom | base64 | tr -d '/+=' | head -c 16)
marketer_password=$(head -c 12 /dev/urandom | base64 | tr -d '/+=' | head -c 16)
"$bin" user add admin --role admin >/dev/null
printf '%s\n' "$admin_password" | "$bin" user password admin --password-stdin
"$bin" user add marketer --role contributor >/dev/null
printf '%s\n' "$marketer_password" | "$bin" user password marketer --password-stdin
"$bin" export users marketing --add marketer >/dev/null
"$bin" daemon 2>"$state/daemon.log" &
daemon_pid=$!
trap 'kill $daemon_pid $sandbox_pid 2>/dev/null || true; wait 2>/dev/null || true' EXIT
trap 'exit 0' INT TERM
for _ in $(seq 1 100); do
  "$bin" healthcheck >/dev/null 2>&1 && break
  if ! kill -0 $daemon_pid 2>/dev/null; then
    # Taken since the check at the start, say.
    if grep -q "cannot listen for status on" "$state/daemon.log"; then
      port_busy
    else
      echo "the daemon stopped; see $state/daemon.log" >&2
    fi
    exit 1
  fi
  sleep 0.1
done
cat <<TEXT

  Open http://127.0.0.1:$port in a browser and sign in:
    administrator:  admin     $admin_password    (connections, users, audit, every export)
    marketer:       marketer  $marketer_password    (the exports open to contributors; try Run on "marketing")

  The daemon's log: $state/daemon.log. Press Ctrl-C to stop the daemon, the sandbox and the console.
TEXT
wait $daemon_pid
