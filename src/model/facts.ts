/**
 * Facts: what an agent observed about its host (inventory), kept on the machine as observed state. They
 * are never desired state: no history entry, no rewind, no export or import, never mixed into params.
 * Templates read them as `facts.*` (beside the params, never among them) and rollout selectors as
 * `facts.<path>=value`.
 *
 * One TypeBox declaration gives both the TypeScript type and the JSON Schema the API validates with;
 * every string and list is bounded so one machine's facts stay small (MAX_FACTS_BYTES).
 */
import Type, { type Static } from 'typebox';
import { MAC_PATTERN, MAX_FACT_ITEMS } from './fact-limits.js';

export { MAC_PATTERN, MAX_FACT_ITEMS, MAX_FACTS_BYTES } from './fact-limits.js';

const closed = { additionalProperties: false } as const;
const Text = (max = 256) => Type.String({ maxLength: max });
const OptText = (max = 256) => Type.Union([Type.String({ maxLength: max }), Type.Null()]);
const Count = Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER });


export const FactsSchema = Type.Object(
  {
    /** The host's name (the kernel's, else /etc/hostname). */
    hostname: Text(253),
    /** /etc/machine-id (systemd, RFC 4122 without dashes): the strongest identity a Linux host has. */
    machineId: OptText(64),
    /** SMBIOS system UUID (/sys/class/dmi/id/product_uuid); null when absent or not readable. */
    productUuid: OptText(64),
    /** MAC addresses of network interfaces backed by a device (not bridges, veths or loopback), sorted. */
    macs: Type.Array(Type.String({ pattern: MAC_PATTERN }), { maxItems: MAX_FACT_ITEMS }),
    /** IP addresses of every non-loopback interface. */
    addresses: Type.Array(
      Type.Object({ interface: Text(64), address: Text(64), family: Type.Union([Type.Literal('IPv4'), Type.Literal('IPv6')]), prefix: Type.Integer({ minimum: 0, maximum: 128 }) }, closed),
      { maxItems: MAX_FACT_ITEMS },
    ),
    /** From /etc/os-release (os-release(5)): ID, VERSION_ID, PRETTY_NAME, ID_LIKE split on spaces. */
    os: Type.Object({ id: OptText(64), versionId: OptText(64), prettyName: OptText(), idLike: Type.Array(Text(64), { maxItems: 16 }) }, closed),
    /** The running kernel's release (uname -r). */
    kernel: Text(),
    /** The machine architecture (uname -m), e.g. x86_64. */
    arch: Text(32),
    cpu: Type.Object({ model: OptText(), count: Count }, closed),
    /** Total memory (MemTotal), in bytes. */
    memoryBytes: Count,
    /** Block devices backed by hardware (not loop, ram or device-mapper), with their size in bytes. */
    disks: Type.Array(Type.Object({ name: Text(64), sizeBytes: Count, model: OptText(), rotational: Type.Union([Type.Boolean(), Type.Null()]) }, closed), { maxItems: MAX_FACT_ITEMS }),
    /** The agent version that collected them. */
    agentVersion: OptText(64),
    /**
     * SMBIOS system information (/sys/class/dmi/id: sys_vendor, product_name, product_serial), each null
     * when absent or not readable (product_serial is root-only). Optional: agents before 0.2 omit it.
     */
    system: Type.Optional(Type.Object({ vendor: OptText(), product: OptText(), serial: OptText() }, closed)),
    /**
     * Network interfaces backed by a device, by name: MAC, kernel driver, link state (operstate) and speed
     * in Mb/s (null when the driver does not say, e.g. virtio). Optional: agents before 0.2 omit it.
     */
    nics: Type.Optional(
      Type.Array(
        Type.Object(
          {
            name: Text(64),
            mac: Type.String({ pattern: MAC_PATTERN }),
            driver: OptText(64),
            link: Type.Union([Type.Literal('up'), Type.Literal('down'), Type.Literal('unknown')]),
            speedMbps: Type.Union([Count, Type.Null()]),
          },
          closed,
        ),
        { maxItems: MAX_FACT_ITEMS },
      ),
    ),
    /**
     * The boot environment the host runs in, from `takt.bootenv=` on its kernel command line (an in-memory
     * environment takt booted, e.g. `discovery`); null on an installed OS. Optional: older agents omit it.
     */
    bootenv: Type.Optional(OptText(64)),
  },
  closed,
);

/** What the agent sends. */
export type Facts = Static<typeof FactsSchema>;

/** Facts as a machine carries them: what was sent, and when the endpoint received it (ISO-8601). */
export type ObservedFacts = Facts & { observedAt: string };

/** The reserved template variable holding the machine's facts; a param may not use this name. */
export const FACTS_VAR = 'facts';

/** Top-level fact names, for lint messages and selectors. */
export const FACT_FIELDS: readonly string[] = Object.keys(FactsSchema.properties);

/**
 * The identity a host is recognised by, strongest first: machine-id, else the SMBIOS UUID, else its MAC
 * addresses. A stored machine is compared on the strongest identity *it* has (see sameHost), never on one
 * the joining host chooses: a host that leaves out its machine-id cannot fall back to MACs, which anyone
 * on the LAN sees.
 */
export type HostIdentity = { kind: 'machineId'; value: string } | { kind: 'productUuid'; value: string } | { kind: 'macs'; values: string[] } | null;

/** The strongest identity in `f`, or null when it has none (no machine-id, no UUID, no MAC). */
export function identityOf(f: Pick<Facts, 'machineId' | 'productUuid' | 'macs'>): HostIdentity {
  if (f.machineId) return { kind: 'machineId', value: f.machineId };
  if (f.productUuid) return { kind: 'productUuid', value: f.productUuid };
  if (f.macs.length > 0) return { kind: 'macs', values: f.macs };
  return null;
}

/**
 * Whether the joining host (its reported facts) is the host a stored machine's facts describe: the stored
 * machine's strongest identity decides, and the joining host must report that same kind and match it
 * (machine-id or UUID equal; for MACs, one in common, as NICs get added and replaced). A host reporting a
 * weaker identity than the stored machine has never matches: VMs cloned from one template may share an
 * SMBIOS UUID yet have a machine-id each, and MACs are public on the LAN.
 */
export function sameHost(joining: Pick<Facts, 'machineId' | 'productUuid' | 'macs'>, stored: Facts | null): boolean {
  const id = stored ? identityOf(stored) : null;
  if (!id) return false;
  if (id.kind === 'machineId') return joining.machineId === id.value;
  if (id.kind === 'productUuid') return joining.productUuid === id.value;
  return joining.macs.some((m) => id.values.includes(m));
}


/**
 * Facts an agent reports for a machine, with the identity fields kept from `stored` (what registration
 * wrote; none when the machine never registered): a joined host cannot claim another host's identity
 * and so redirect that host's next re-join to itself.
 */
export function keepIdentity(reported: Facts, stored: Facts | null): Facts {
  return { ...reported, machineId: stored?.machineId ?? null, productUuid: stored?.productUuid ?? null, macs: stored?.macs ?? [] };
}

/**
 * The value at a dotted path below the facts (`os.id`, `cpu.count`, `macs`), or undefined.
 * Only own properties are followed, so `__proto__` or `constructor` never reach an object's prototype.
 */
export function factAt(facts: Facts | null, path: string): unknown {
  let v: unknown = facts;
  for (const seg of path.split('.')) {
    if (v === null || typeof v !== 'object' || !Object.hasOwn(v, seg)) return undefined;
    v = (v as Record<string, unknown>)[seg];
  }
  return v;
}
