/**
 * Boot scripts: the per-machine iPXE script and kernel command line of a boot environment, rendered by
 * the one template renderer (template.ts) with the same strictness as task scripts, plus the hashes that
 * say which definition and which values produced them (provenance, as for a job's rendered script).
 *
 * Scope: the bootenv's declared params by name, `machine` ({ id, name, environment }), `facts` (the
 * machine's observed inventory, `{}` before discovery) and `boot`:
 *   boot.endpoint  the endpoint's base URL as seen from the provisioning network, e.g. http://10.0.0.1:8080
 *   boot.kernel    URL of the kernel (absent when the bootenv has none)
 *   boot.initrds   URLs of the initrds, in order
 *   boot.files     file name → URL of each extra file
 *   boot.cmdline   the rendered command line (in the ipxe template; absent while rendering the cmdline itself)
 *   boot.firmware  `bios` or `uefi`
 *   boot.mac       the MAC address the machine booted from, lower-case `aa:bb:cc:dd:ee:ff`
 *   boot.uuid      its SMBIOS UUID, lower-case, or '' when unknown
 *   boot.api       the endpoint's API URL its agent uses (https beyond loopback), or '' when none is set
 *   boot.ca        SHA-256 fingerprint of the endpoint's CA certificate (what the agent pins), or ''
 *   boot.token     the discovery credential (model/discovery.ts) when the bootenv is `discovery`, else ''
 *
 * Artifact URLs are content-addressed (`<endpoint>/boot/files/<sha256>/<name>`): a changed file is a new
 * URL, so no firmware or proxy cache ever serves a stale kernel.
 */
import type { BootArtifact, BootenvDef, Firmware } from '../model/content.js';
import { hashObject, sha256 } from '../model/hash.js';
import { renderTemplate } from './template.js';

/** The reserved template variable with the boot URLs and the booting machine's firmware and address. */
export const BOOT_VAR = 'boot';
export const BOOT_FIELDS = ['endpoint', 'kernel', 'initrds', 'files', 'cmdline', 'firmware', 'mac', 'uuid', 'api', 'ca', 'token'] as const;

/**
 * The script used when a bootenv has a kernel and no `ipxe`: fetch the kernel with the command line,
 * each initrd, and boot. iPXE (https://ipxe.org/cmd/kernel, /cmd/initrd) passes several initrds to a
 * Linux kernel on BIOS and on UEFI alike.
 */
export const DEFAULT_IPXE = `#!ipxe
kernel {{ boot.kernel }} {{ boot.cmdline }}
{% for i in boot.initrds %}initrd {{ i }}
{% endfor %}boot
`;

/** Where the endpoint serves an artifact: content-addressed, so caches never serve a stale file. */
export function artifactUrl(endpoint: string, a: Pick<BootArtifact, 'sha256' | 'name'>): string {
  return `${endpoint.replace(/\/+$/, '')}/boot/files/${a.sha256}/${encodeURIComponent(a.name)}`;
}

/** Who is booting, and from where. */
export interface BootTarget {
  machine: { id: string; name: string; environment: string };
  facts?: Record<string, unknown>;
  /** The bootenv's declared params, resolved for this machine (render/params.ts). */
  params?: Record<string, unknown>;
  endpoint: string;
  firmware: Firmware;
  mac: string;
  uuid?: string;
  /** The agent API URL (`boot.api`). */
  api?: string;
  /** The CA fingerprint agents pin (`boot.ca`). */
  ca?: string;
  /** The discovery credential (`boot.token`): only for the discovery bootenv. */
  token?: string;
}

export interface RenderedBoot {
  /** The iPXE script, starting with `#!ipxe`. */
  script: string;
  /** The kernel command line ('' without a kernel). */
  cmdline: string;
  /** sha256 (hex) of the script: what this machine was booted with. */
  scriptHash: string;
  /** sha256 (hex) of the bootenv definition the script came from. */
  bootenvHash: string;
}

/**
 * Renders a bootenv for one machine.
 * @throws TemplateError (render/template.ts) when a template fails: a missing param or field, a limit.
 * @throws Error when the bootenv has neither a kernel nor an `ipxe` script (lint refuses such a bootenv).
 */
export function renderBoot(def: BootenvDef, target: BootTarget): RenderedBoot {
  if (!def.kernel && def.ipxe === undefined) throw new Error(`bootenv '${def.name}' has neither a kernel nor an ipxe script`);
  const boot: Record<string, unknown> = {
    endpoint: target.endpoint.replace(/\/+$/, ''),
    initrds: (def.initrds ?? []).map((a) => artifactUrl(target.endpoint, a)),
    files: Object.fromEntries((def.files ?? []).map((a) => [a.name, artifactUrl(target.endpoint, a)])),
    firmware: target.firmware,
    mac: target.mac.toLowerCase(),
    uuid: (target.uuid ?? '').toLowerCase(),
    api: target.api ?? '',
    ca: target.ca ?? '',
    token: target.token ?? '',
  };
  if (def.kernel) boot.kernel = artifactUrl(target.endpoint, def.kernel);
  const scope = (extra: Record<string, unknown>): Record<string, unknown> => ({
    ...(target.params ?? {}),
    machine: target.machine,
    facts: target.facts ?? {},
    [BOOT_VAR]: { ...boot, ...extra },
  });
  // The command line is one line of space-separated words: newlines a template leaves (loops, tags)
  // would end iPXE's `kernel` command, and runs of blanks are the gaps of tags that rendered nothing.
  const cmdline = def.cmdline === undefined ? '' : renderTemplate(def.cmdline, scope({})).split(/\s+/).filter(Boolean).join(' ');
  const script = renderTemplate(def.ipxe ?? DEFAULT_IPXE, scope({ cmdline }));
  return {
    script,
    cmdline,
    scriptHash: sha256(script),
    bootenvHash: hashObject(def),
  };
}
