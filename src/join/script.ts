/**
 * The install script a host runs to join: `curl … https://ENDPOINT/join/TOKEN | sh` fetches it, rendered
 * for that token. POSIX sh (dash, busybox ash, bash), as root, on Linux x86_64 with glibc, curl, tar and
 * gzip. It holds no secret but the join token that fetched it (and the endpoint's public CA and key pin).
 *
 * What it does, in order, stopping with a clear message and a non-zero exit at the first failure:
 *   1. checks the host (Linux, x86_64, glibc's loader, root, the tools it needs);
 *   2. downloads the agent bundle from the endpoint with the same key pin, checks its SHA-256, unpacks it
 *      into a temporary directory beside the prefix (same filesystem, so the last step is a rename);
 *   3. writes the endpoint's CA (which came over the pinned connection) to etc/ca.pem and runs the bundled
 *      `takt agent join`, which collects the inventory, registers over TLS trusting only that CA (and the
 *      server's name or address in its certificate), and writes the machine token to etc/token
 *      (0600; the token is never on a command line or in an environment);
 *   4. moves the new tree into place (keeping an earlier install's agent state), then installs and starts
 *      `takt-agent.service` when systemd runs the host, else prints the exact command that runs the agent.
 * Everything it downloads or writes before step 4 lives in the temporary directory, removed on any exit;
 * when step 4 fails, the earlier install is put back with the machine's new token in it. TAKT_PREFIX must
 * be absent, empty or an earlier takt install (it holds BUNDLE.json): anything else is refused, never wiped.
 * The whole script is one function called on its last line, so a download cut short runs nothing.
 */

export interface InstallScriptInput {
  /** The endpoint's origin as the host reaches it, e.g. https://10.0.0.1:8092. */
  url: string;
  /** `sha256//<base64>` of the server's public key (curl --pinnedpubkey); null on plain http (loopback tests). */
  pin: string | null;
  /** The endpoint's CA certificate (PEM) the agent will trust, and nothing else; null on plain http. */
  caPem: string | null;
  /** The join token (the one in the URL that fetched this script). */
  token: string;
  /** SHA-256 (hex) of the agent bundle the script downloads. */
  bundleSha256: string;
  /** The takt version that renders it (for the header). */
  version: string;
}

/** `s` as one single-quoted sh word (a `'` becomes `'\''`). */
export function shellQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/**
 * A script that prints `message` (prefixed `takt join:`) on stderr and exits 1: what `curl … | sh` gets
 * instead of the install script when the endpoint refuses (expired token, …). Control characters in the
 * message are dropped so it prints as one plain line.
 */
export function failureScript(message: string): string {
  // eslint-disable-next-line no-control-regex
  const line = message.replace(/[\u0000-\u001f\u007f]+/g, ' ');
  return `#!/bin/sh\nprintf '%s\\n' ${shellQuote(`takt join: ${line}`)} >&2\nexit 1\n`;
}

/** The install script for one join token. */
export function installScript(i: InstallScriptInput): string {
  const tls = i.pin !== null;
  return `#!/bin/sh
# takt ${i.version}: join this host to the takt endpoint ${i.url}
# Run as root. TAKT_PREFIX installs elsewhere than /opt/takt; TAKT_SYSTEMD=no never installs a unit.
${tls ? `# Every download pins the endpoint's public key (curl --pinnedpubkey), which is why -k is safe here:
# curl talks to this endpoint's key and no other, whatever certificate chain is presented.
` : `# Plain HTTP: only for an endpoint on this host's loopback (tests); remote endpoints use https.
`}set -eu

takt_join() {
  endpoint=${shellQuote(i.url)}
  pin=${shellQuote(i.pin ?? '')}
  token=${shellQuote(i.token)}
  bundle_sha256=${shellQuote(i.bundleSha256)}
  ca=${shellQuote(i.caPem?.trim() ?? '')}
  prefix=\${TAKT_PREFIX:-/opt/takt}

  say() { printf 'takt join: %s\\n' "$*" >&2; }
  fail() { say "$*"; exit 1; }

  [ "$(uname -s)" = Linux ] || fail "this host runs $(uname -s); the takt agent bundle is for Linux"
  case $(uname -m) in x86_64 | amd64) ;; *) fail "this host is $(uname -m); the takt agent bundle is for x86_64" ;; esac
  [ "$(id -u)" = 0 ] || fail "run this as root (e.g. curl ... | sudo sh)"
  [ -e /lib64/ld-linux-x86-64.so.2 ] || fail "glibc's loader /lib64/ld-linux-x86-64.so.2 is missing: the bundled Node runtime needs glibc"
  for tool in curl tar gzip mktemp; do
    command -v "$tool" >/dev/null 2>&1 || fail "$tool is not installed (needed to download and unpack the agent)"
  done
  case $prefix in /?*) ;; *) fail "TAKT_PREFIX must be an absolute path (got '$prefix')" ;; esac
  case $prefix in *[!A-Za-z0-9/._-]*) fail "TAKT_PREFIX may hold only letters, digits and / . _ - (got '$prefix')" ;; esac
  prefix=\${prefix%/}

  # Only an earlier takt install (its BUNDLE.json) is replaced: TAKT_PREFIX=/usr/local must not lose /usr/local.
  if [ -e "$prefix" ] || [ -L "$prefix" ]; then
    [ -d "$prefix" ] && [ ! -L "$prefix" ] || fail "TAKT_PREFIX $prefix exists and is not a directory; choose another TAKT_PREFIX"
    if [ ! -f "$prefix/BUNDLE.json" ] && [ -n "$(ls -A "$prefix")" ]; then
      fail "TAKT_PREFIX $prefix is not empty and holds no earlier takt install (no $prefix/BUNDLE.json); it would be replaced, so choose another TAKT_PREFIX (e.g. /opt/takt)"
    fi
  fi

  parent=$(dirname "$prefix")
  # Parents that do not exist yet (/opt) get the usual 0755, never the stage's 0700.
  umask 022
  mkdir -p "$parent" || fail "cannot create $parent"
  umask 077
  stage=$(mktemp -d "$parent/.takt-join.XXXXXX") || fail "cannot create a temporary directory in $parent"
  trap 'rm -rf "$stage"' EXIT
  trap 'exit 130' INT TERM HUP

  say "downloading the agent from $endpoint"
  if [ -n "$pin" ]; then
    curl -fsS --pinnedpubkey "$pin" -k -o "$stage/agent.tar.gz" "$endpoint/join/$token/agent.tar.gz" || fail "could not download the agent bundle (curl's message is above)"
  else
    curl -fsS -o "$stage/agent.tar.gz" "$endpoint/join/$token/agent.tar.gz" || fail "could not download the agent bundle (curl's message is above)"
  fi
  if command -v sha256sum >/dev/null 2>&1; then
    printf '%s  %s\\n' "$bundle_sha256" "$stage/agent.tar.gz" | sha256sum -c --status - || fail "the agent bundle's SHA-256 is not $bundle_sha256 (damaged download)"
  fi
  mkdir "$stage/new"
  tar -xzf "$stage/agent.tar.gz" -C "$stage/new" || fail "could not unpack the agent bundle"
  rm -f "$stage/agent.tar.gz"
  "$stage/new/bin/takt" --help >/dev/null 2>&1 || fail "the bundled runtime does not start on this host: $("$stage/new/bin/takt" --help 2>&1 | head -n 3)"
  mkdir -p "$stage/new/etc" "$stage/new/var"

  ca_opt=
  if [ -n "$ca" ]; then
    printf '%s\\n' "$ca" > "$stage/new/etc/ca.pem"
    ca_opt="--ca $prefix/etc/ca.pem"
  fi
  printf '%s\\n' "$token" > "$stage/join.token"
  say "registering this host"
  if [ -n "$ca" ]; then
    "$stage/new/bin/takt" agent join --endpoint "$endpoint" --ca "$stage/new/etc/ca.pem" --join-token-file "$stage/join.token" --token-file "$stage/new/etc/token" || fail "registration failed (the message is above)"
  else
    "$stage/new/bin/takt" agent join --endpoint "$endpoint" --join-token-file "$stage/join.token" --token-file "$stage/new/etc/token" || fail "registration failed (the message is above)"
  fi
  rm -f "$stage/join.token"

  run="$prefix/bin/takt agent --endpoint $endpoint\${ca_opt:+ $ca_opt} --token-file $prefix/etc/token --dir $prefix/var --report-facts"
  systemd=no
  if [ "\${TAKT_SYSTEMD:-auto}" != no ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    systemd=yes
    systemctl stop takt-agent.service >/dev/null 2>&1 || true
  fi

  # Into place: an earlier install's agent state (pending job reports) is kept; its files are replaced.
  # Registration has already replaced the machine's token, so when this fails the earlier install is put
  # back as it was, with the new token in it (the old one no longer works): nothing is lost.
  restore() {
    [ -d "$stage/old" ] && [ -d "$stage/new/var" ] && [ ! -e "$stage/old/var" ] && mv "$stage/new/var" "$stage/old/var"
    [ -d "$stage/old" ] && [ ! -e "$prefix" ] && mv "$stage/old" "$prefix"
    if [ -d "$prefix/etc" ] && [ -f "$stage/new/etc/token" ]; then
      cp "$stage/new/etc/token" "$prefix/etc/token.new" && mv "$prefix/etc/token.new" "$prefix/etc/token" && say "kept the earlier install in $prefix, with the machine's new token in $prefix/etc/token"
    fi
    return 0
  }
  if [ -d "$prefix" ]; then
    mv "$prefix" "$stage/old" || { restore; fail "cannot move the earlier install $prefix aside"; }
    if [ -d "$stage/old/var" ]; then
      rm -rf "$stage/new/var" && mv "$stage/old/var" "$stage/new/var" || { restore; fail "cannot move the agent state from $prefix/var"; }
    fi
  fi
  if ! mv "$stage/new" "$prefix"; then
    restore
    fail "cannot move the new install into $prefix"
  fi
  chmod 755 "$prefix" "$prefix/bin" "$prefix/lib" "$prefix/app" "$prefix/app/cli"

  if [ "$systemd" = yes ]; then
    unit=/etc/systemd/system/takt-agent.service
    cat > "$unit.tmp" <<UNIT || fail "cannot write $unit"
[Unit]
Description=takt agent (endpoint $endpoint)
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=$run
Restart=always
RestartSec=5

[Install]
WantedBy=multi-user.target
UNIT
    chmod 644 "$unit.tmp" && mv "$unit.tmp" "$unit" || fail "cannot install $unit"
    systemctl daemon-reload || fail "systemctl daemon-reload failed"
    systemctl enable takt-agent.service >/dev/null 2>&1 || fail "systemctl enable takt-agent.service failed"
    systemctl restart takt-agent.service || fail "takt-agent.service did not start: journalctl -u takt-agent"
    say "joined; the agent runs as takt-agent.service (journalctl -u takt-agent -f)"
  else
    say "joined; systemd is not running this host, so start the agent yourself (as root, kept running; restart one that already runs, its token no longer works):"
    printf '%s\\n' "$run"
  fi
}

takt_join "$@"
`;
}
