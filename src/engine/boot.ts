/**
 * Which iPXE script a booting machine gets: the engine's half of the boot HTTP service
 * (src/provision/boot-http.ts asks, this answers). A machine is known by the MACs and SMBIOS UUID its
 * boot settings list (model/boot.ts) or, once discovered, by the MACs its agent reported (facts); it
 * boots into its `boot.bootenv`, rendered by render/bootscript.ts with the params that bootenv declares.
 *
 * Boot scripts are served without authentication (firmware has no token, Debian's iPXE no HTTPS), so a
 * script never carries a secret: a bootenv's params are resolved like a task's, and a sealed (secure)
 * value refuses the render instead of going out in the clear.
 */
import type { ContentSet } from '../model/content.js';
import { DISCOVERY_BOOTENV, LOCAL_BOOTENV, bootsAs } from '../model/boot.js';
import type { Machine } from '../model/machine.js';
import { isSealed } from '../model/secure.js';
import { renderBoot } from '../render/bootscript.js';
import { paramLayers, resolveParam } from '../render/params.js';
import { TemplateError } from '../render/template.js';
import type { Reads } from '../store/store.js';

/** A booting client as the boot service saw it (see provision/boot-http.ts BootQuery). */
export interface BootClient {
  mac: string;
  uuid?: string;
  platform: 'pcbios' | 'efi';
}

export interface BootAnswer {
  script: string;
  /** The machine it was rendered for; undefined for an unknown client. */
  machine?: { id: string; name: string };
  /** The bootenv rendered (`local` for the built-in). */
  bootenv: string;
  /** Set when the script is not the machine's bootenv because something is wrong: what, in words. */
  problem?: string;
}

export interface BootScriptsOptions {
  store: Pick<Reads, 'listMachinesWithBootText' | 'listMachinesWithFactText'>;
  content: () => ContentSet;
  /** The endpoint's boot URL as machines on the provisioning network reach it, e.g. `http://10.0.0.1:8080` (known once it listens). */
  endpoint: () => string;
  /** Whether unknown machines boot the `discovery` bootenv (when a pack defines it) instead of their disk. */
  discovery: boolean;
  /** The API URL agents on the provisioning network use (`boot.api`), and the CA fingerprint they pin (`boot.ca`). */
  agentAccess?: () => { api: string; ca: string } | null;
  /**
   * Makes the discovery credential for a machine booting from a MAC (model/discovery.ts discoveryToken
   * with the endpoint's key); absent: `boot.token` is ''.
   */
  discoveryToken?: (mac: string) => string;
}

/**
 * The script that boots from the local disk: iPXE's `exit` hands control back to the firmware, which
 * boots the next device. SeaBIOS does; OVMF may not (provisioning-facts.md trap 5), which is why a UEFI
 * machine's power driver sets the boot order to its disk as well.
 */
export function localScript(why: string): string {
  return `#!ipxe\necho takt: ${ipxeText(why)}\nexit\n`;
}

/** Text safe inside an iPXE `echo`: no newlines, and no `${…}` for iPXE to expand. */
function ipxeText(s: string): string {
  return s.replace(/[\r\n]+/g, ' ').replace(/\$\{/g, '$ {');
}

export class BootScripts {
  constructor(private readonly opts: BootScriptsOptions) {}

  /** The machine a client boots as: by its boot settings first, then by the MACs its agent reported. */
  async machineFor(c: BootClient): Promise<Machine | undefined> {
    const ids = [c.mac, ...(c.uuid ? [c.uuid] : [])];
    const byBoot = (await this.opts.store.listMachinesWithBootText(ids)).find((m) => m.boot && bootsAs(m.boot, c.mac, c.uuid));
    if (byBoot) return byBoot;
    return (await this.opts.store.listMachinesWithFactText(c.mac)).find((m) => m.facts?.macs?.includes(c.mac));
  }

  /**
   * The script for `c`. Never throws for a client's sake: a problem (a bootenv that no longer exists, a
   * template that fails, a secure param) boots the machine from its disk with the problem on its console,
   * and `problem` says it for the endpoint's log and the machine's reason.
   */
  async script(c: BootClient): Promise<BootAnswer> {
    const content = this.opts.content();
    const m = await this.machineFor(c);
    const firmware = c.platform === 'efi' ? 'uefi' : 'bios';
    if (!m) {
      const discovery = content.objects.bootenvs.get(DISCOVERY_BOOTENV)?.def;
      if (this.opts.discovery && discovery) {
        const machine = { id: '', name: '', environment: 'metal' };
        try {
          return { script: renderBoot(discovery, { machine, endpoint: this.opts.endpoint(), firmware, mac: c.mac, ...(c.uuid ? { uuid: c.uuid } : {}), ...this.access(DISCOVERY_BOOTENV, c.mac), params: this.params(content, discovery.params, undefined) }).script, bootenv: DISCOVERY_BOOTENV };
        } catch (e) {
          return this.failed(DISCOVERY_BOOTENV, undefined, e);
        }
      }
      const why = `unknown machine ${c.mac}${c.uuid ? ` (${c.uuid})` : ''}: no machine boots as it${this.opts.discovery ? ' and no pack defines the discovery bootenv' : ', and discovery is off'}; booting from disk`;
      return { script: localScript(why), bootenv: LOCAL_BOOTENV, problem: why };
    }
    const name = m.boot?.bootenv ?? LOCAL_BOOTENV;
    const ref = { id: m.id, name: m.name };
    if (name === LOCAL_BOOTENV) return { script: localScript(`${m.name} boots from its disk`), machine: ref, bootenv: LOCAL_BOOTENV };
    const def = content.objects.bootenvs.get(name)?.def;
    if (!def) return this.failed(name, m, new Error(`bootenv '${name}' is not installed`));
    if (def.firmware && !(def.firmware as readonly string[]).includes(firmware)) {
      return this.failed(name, m, new Error(`bootenv '${name}' boots ${def.firmware.join(', ')} firmware, and this machine booted ${firmware}`));
    }
    try {
      const params = this.params(content, def.params, m);
      const r = renderBoot(def, { machine: { id: m.id, name: m.name, environment: m.environment }, facts: (m.facts ?? {}) as Record<string, unknown>, params, endpoint: this.opts.endpoint(), firmware, mac: c.mac, ...(c.uuid ? { uuid: c.uuid } : {}), ...this.access(name, c.mac) });
      return { script: r.script, machine: ref, bootenv: name };
    } catch (e) {
      return this.failed(name, m, e);
    }
  }

  /**
   * The agent's way in for a script: the API URL and CA fingerprint always, and for the discovery bootenv
   * a discovery credential bound to the booting MAC (worth little on its own: it registers only the
   * machine booting from that MAC while it is in discovery, for 30 minutes; see engine/join.ts discover).
   */
  private access(bootenv: string, mac: string): { api?: string; ca?: string; token?: string } {
    const a = this.opts.agentAccess?.() ?? null;
    const token = bootenv === DISCOVERY_BOOTENV ? this.opts.discoveryToken?.(mac) : undefined;
    return { ...(a ? { api: a.api, ca: a.ca } : {}), ...(token ? { token } : {}) };
  }

  /** The bootenv's declared params for `m` (machine, profiles, global; no stage: a boot is not a task). */
  private params(content: ContentSet, declared: { required?: string[]; optional?: string[] } | undefined, m: Machine | undefined): Record<string, unknown> {
    const layers = paramLayers(content, { machine: m ? { params: m.params, profiles: m.profiles, outputs: m.outputs } : { params: {}, profiles: [] } });
    const out: Record<string, unknown> = {};
    for (const name of [...(declared?.required ?? []), ...(declared?.optional ?? [])]) {
      const p = resolveParam(content, layers, name);
      if (p && (p.secure || isSealed(p.value))) throw new Error(`param '${name}' is secure, and boot scripts are served without authentication`);
      if (p === undefined && declared?.required?.includes(name)) throw new Error(`required param '${name}' has no value`);
      out[name] = p?.value ?? null;
    }
    return out;
  }

  private failed(bootenv: string, m: Machine | undefined, e: unknown): BootAnswer {
    const what = e instanceof TemplateError ? `template line ${e.line}, col ${e.col}: ${e.message}` : (e as Error).message;
    const problem = `cannot render bootenv '${bootenv}'${m ? ` for ${m.name}` : ''}: ${what}`;
    return { script: localScript(`${problem}; booting from disk`), ...(m ? { machine: { id: m.id, name: m.name } } : {}), bootenv: LOCAL_BOOTENV, problem };
  }
}
