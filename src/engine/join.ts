/**
 * Joining hosts: join tokens (made, listed, revoked), registration of a host with its inventory, the
 * facts an agent reports, and machine token rotation. A host that joins again — recognised by the
 * strongest identity the stored machine has: machine-id, else SMBIOS UUID, else MACs (model/facts.ts
 * sameHost) — becomes the machine it was, with a new token; its old token stops working. A take-over is
 * refused when the token names another machine, when a broker runs the machine, or when the machine's
 * agent is connected right now from another address (a clone with the same machine-id).
 *
 * Facts are observed state: they are written with their own store call, never through the desired-state
 * commit path, so they have no history entry and no rewind, export or import touches them.
 */
import { randomBytes } from 'node:crypto';
import { bootsAs, DISCOVERY_BOOTENV } from '../model/boot.js';
import { DURATION_RANGES, parseDuration } from '../model/duration.js';
import { TaktError } from '../model/errors.js';
import { keepIdentity, sameHost, type Facts, type ObservedFacts } from '../model/facts.js';
import { sha256 } from '../model/hash.js';
import { isLoopbackHost, isValidHost } from '../model/host.js';
import { DEFAULT_JOIN_EXPIRY_MS, joinTokenProblem, MAX_JOIN_USES, viewJoinToken, type JoinToken, type JoinTokenView } from '../model/join.js';
import { METAL_ENVIRONMENT, REMOTE_ENVIRONMENT, type Machine } from '../model/machine.js';
import type { Page, Reads, Store, Tx } from '../store/store.js';
import { newMachineToken, publicMachine, type ClassifyOutcome, type Engine } from './engine.js';
import { assertEnvironment } from './declared.js';
import { assertMachineName, looksLikeId } from './ids.js';

/**
 * Brokers whose machines boot from the network and run their agent from what they boot (the qemu broker
 * makes the VM; its agent comes from the bootenv): discovery may register them. Other brokers (local,
 * netns, ssh) run the agent themselves, and a discovery credential never takes theirs over.
 */
const NETWORK_BOOTED_BROKERS = new Set(['qemu']);


export interface JoinTokenInput {
  /** The machine's name; only for a single-use token. Default: the host's hostname, made a valid name. */
  name?: string | null;
  pipeline?: string | null;
  profiles?: string[];
  /** Default `remote`. */
  environment?: string;
  /** Lifetime: a duration (`1h`, `30m`) or seconds; default 1 h, from 1 m to 7 d. */
  expires?: string | number;
  /** Registrations allowed, 1…1000; default 1. */
  uses?: number;
  /** The endpoint URL the host uses (https, or http on loopback only). */
  url: string;
}

export interface Registered {
  machine: Machine;
  /** The machine's new token: shown once, only its digest is kept. */
  token: string;
  /**
   * True when the host was recognised as a machine that had registered before (its old token no longer
   * works); false for a new machine, and for a discovered machine made ahead without facts (qemu broker).
   */
  rejoined: boolean;
}

/** How many `name-2`, `name-3`… a hostname-derived name tries before giving up. */
const MAX_NAME_SUFFIX = 1000;

export class Joins {
  constructor(
    private readonly store: Store,
    private readonly engine: Engine,
    private readonly now: () => number = Date.now,
  ) {}

  /**
   * Makes a join token. Its pipeline and profiles must exist now (they are checked again when a host
   * registers); a named token allows one use, so one name makes one machine.
   * @throws TaktError invalid/bad_request naming the field, conflict when the name is taken.
   */
  async create(input: JoinTokenInput, author: string): Promise<{ joinToken: JoinTokenView; token: string }> {
    const now = this.now();
    const uses = input.uses ?? 1;
    if (!Number.isInteger(uses) || uses < 1 || uses > MAX_JOIN_USES) throw new TaktError('invalid', `uses must be a whole number from 1 to ${MAX_JOIN_USES}`, { path: '/uses' });
    const expiresMs = input.expires === undefined ? DEFAULT_JOIN_EXPIRY_MS : parseDuration(input.expires, 'expires', DURATION_RANGES.joinExpiry);
    const name = input.name ?? null;
    if (name !== null) {
      assertMachineName(name);
      if (uses !== 1) throw new TaktError('invalid', `a join token that names its machine ('${name}') can be used once; leave the name out to name each machine after its host`, { path: '/uses' });
      if (await this.store.getMachineByName(name)) {
        throw new TaktError('conflict', `a machine named '${name}' already exists; to join its host again, make a token without a name (takt machines join): a re-join is recognised by the host's machine identity, not by name`, { path: '/name' });
      }
    }
    this.engine.checkPatch(this.engine.content.current, { pipeline: input.pipeline ?? null, profiles: input.profiles ?? [] });
    // Refused now, not when a host registers with it: the host would have run the join line for nothing.
    assertEnvironment(this.engine.content.current, name ?? '(joined host)', input.environment ?? REMOTE_ENVIRONMENT, input.pipeline ?? null);
    const id = `jt-${randomBytes(5).toString('hex')}`;
    const token = `tkj.${id}.${randomBytes(24).toString('base64url')}`;
    const t: JoinToken = {
      id,
      name,
      pipeline: input.pipeline ?? null,
      profiles: input.profiles ?? [],
      environment: input.environment ?? REMOTE_ENVIRONMENT,
      url: endpointUrl(input.url),
      maxUses: uses,
      uses: 0,
      expiresAt: new Date(now + expiresMs).toISOString(),
      createdBy: author,
      createdAt: new Date(now).toISOString(),
      revokedAt: null,
      revokedBy: null,
      machines: [],
      machine: null,
    };
    const view = viewJoinToken(t, now);
    await this.store.transact(async (tx) => {
      await tx.insertJoinToken(t, sha256(token));
      tx.emit(`jointokens.create.${id}`, view);
    });
    return { joinToken: view, token };
  }

  async list(page: Page = {}): Promise<JoinTokenView[]> {
    const now = this.now();
    return (await this.store.listJoinTokens(page)).map((t) => viewJoinToken(t, now));
  }

  async get(id: string): Promise<JoinTokenView> {
    return viewJoinToken(await this.find(id), this.now());
  }

  /** Revokes a join token at once (kept, listed as revoked). Revoking it again changes nothing. */
  async revoke(id: string, author: string): Promise<JoinTokenView> {
    await this.find(id);
    return this.store.transact(async (tx) => {
      const t = (await tx.getJoinToken(id))!;
      if (t.revokedAt !== null) return viewJoinToken(t, this.now());
      const next = { ...t, revokedAt: new Date(this.now()).toISOString(), revokedBy: author };
      await tx.updateJoinToken(next);
      const view = viewJoinToken(next, this.now());
      tx.emit(`jointokens.update.${id}`, view);
      return view;
    });
  }

  /**
   * Makes the single-use join token a machine's deployed OS registers with on its first boot (written into
   * the disk's join block by the deploying agent, model/joinblock.ts). It registers machine `idOrName`
   * and nothing else, and only from a host whose facts show that machine's identity (its boot MACs or
   * SMBIOS UUID, or the identity it registered with); the machine then gets a new token and the token it
   * was deployed with stops working. Lifetime DEFAULT_JOIN_EXPIRY_MS (the OS boots minutes after).
   * @param url the endpoint URL the deployed OS uses (the deploying agent's).
   * @throws TaktError not_found for an unknown machine; conflict for a machine a broker runs the agent of
   *   (local, netns, ssh: they have no disk takt deploys to); invalid for a bad url.
   */
  async deployToken(idOrName: string, url: string, author: string): Promise<{ joinToken: JoinTokenView; token: string }> {
    const m = await this.engine.findMachine(idOrName);
    if (m.broker !== null && !NETWORK_BOOTED_BROKERS.has(m.broker)) {
      throw new TaktError('conflict', `machine '${m.name}' is run by broker '${m.broker}', which starts its agent: there is no deployed OS to join`);
    }
    const now = this.now();
    const id = `jt-${randomBytes(5).toString('hex')}`;
    const token = `tkj.${id}.${randomBytes(24).toString('base64url')}`;
    const t: JoinToken = {
      id,
      name: null,
      pipeline: null,
      profiles: [],
      environment: m.environment,
      url: endpointUrl(url),
      maxUses: 1,
      uses: 0,
      expiresAt: new Date(now + DEFAULT_JOIN_EXPIRY_MS).toISOString(),
      createdBy: author,
      createdAt: new Date(now).toISOString(),
      revokedAt: null,
      revokedBy: null,
      machines: [],
      machine: m.id,
    };
    const view = viewJoinToken(t, now);
    await this.store.transact(async (tx) => {
      await tx.insertJoinToken(t, sha256(token));
      tx.emit(`jointokens.create.${id}`, view);
    });
    return { joinToken: view, token };
  }

  /**
   * Registers the host that presents join token `tokenId` with its inventory: the machine it was (same
   * identity, not created by a broker) with a new token, else a new machine made as the token says. Takes
   * one use of the token in the same transaction; a registration that fails takes none.
   * `from`: the joining request's peer address (liveness.ts peerAddress), to tell a clone from the host.
   * @throws TaktError unauthorized when the token is expired, used up or revoked (saying which);
   *   conflict when the name it gives is taken, when the host is a machine the token does not name, or
   *   when that machine's agent is connected from another address; invalid when its pipeline can no
   *   longer start.
   */
  async register(tokenId: string, facts: Facts, from: string | null = null): Promise<Registered> {
    const now = this.now();
    const at = new Date(now).toISOString();
    const t = await this.usable(tokenId, now);
    const observed: ObservedFacts = { ...facts, observedAt: at };
    const author = `join:${t.id}`;
    if (t.machine !== null) return this.registerDeployed(t, facts, observed, from);
    // Checked before (to prepare a new machine outside the transaction) and again inside it, after the
    // token's row is taken: two registrations of one host with one token cannot both make a machine.
    const seen = await this.findHost(this.store, facts);
    if (seen) this.checkTakeOver(t, seen, from);
    const made = seen ? undefined : await this.newMachine(t, facts, observed);
    return this.store.transact(async (tx) => {
      if (!(await tx.takeJoinTokenUse(t.id, at))) {
        const again = await tx.getJoinToken(t.id);
        throw new TaktError('unauthorized', (again && joinTokenProblem(again, now)) ?? `join token ${t.id} can no longer be used`);
      }
      const known = await this.findHost(tx, facts);
      if (!known && !made) throw new TaktError('conflict', `the machine this host was is being deleted; run the join command again`);
      let result: Registered;
      if (known) {
        const m = await tx.lockMachine(known.id);
        if (!m) throw new TaktError('conflict', `machine '${known.name}' was deleted while this host joined; run the join command again`);
        this.checkTakeOver(t, m, from);
        const token = await this.rekey(tx, m, author, 'the host joined again');
        await tx.setMachineFacts(m.id, observed);
        result = { machine: { ...m, facts: observed }, token, rejoined: true };
        tx.emit(`machines.update.${m.id}`, publicMachine(result.machine));
      } else {
        await this.engine.insertMachine(tx, made!.machine, made!.token, author);
        result = { machine: made!.machine, token: made!.token, rejoined: false };
      }
      const current = (await tx.getJoinToken(t.id))!;
      const next = { ...current, machines: [...current.machines, result.machine.id] };
      await tx.updateJoinToken(next);
      tx.emit(`jointokens.update.${t.id}`, viewJoinToken(next, now));
      return result;
    });
  }

  /**
   * A deployed OS registering with its deploy token (`deployToken`): it becomes the token's machine, with a
   * new token, when its facts show that machine's identity.
   * @throws TaktError conflict when the machine is gone or its agent is connected from another address;
   *   forbidden when the host is not that machine (the disk was moved to another one).
   */
  private async registerDeployed(t: JoinToken, facts: Facts, observed: ObservedFacts, from: string | null): Promise<Registered> {
    const author = `join:${t.id}`;
    return this.store.transact(async (tx) => {
      const m = await tx.lockMachine(t.machine!);
      if (!m) throw new TaktError('conflict', `machine ${t.machine} was deleted after this disk was deployed to it; delete the machine's disk or deploy it again`);
      if (!deployedHostIs(m, facts)) {
        throw new TaktError(
          'forbidden',
          `join token ${t.id} was made for machine '${m.name}' (MACs ${m.boot?.macs.join(', ') || 'none'}${m.boot?.uuid ? `, UUID ${m.boot.uuid}` : ''}), and this host reports MACs ${facts.macs.join(', ') || '(none)'}${facts.productUuid ? `, UUID ${facts.productUuid}` : ''}: was the disk moved to another machine? Deploy that machine instead`,
        );
      }
      this.checkNotLive(m, from);
      if (!(await tx.takeJoinTokenUse(t.id, observed.observedAt))) {
        const again = await tx.getJoinToken(t.id);
        throw new TaktError('unauthorized', (again && joinTokenProblem(again, this.now())) ?? `join token ${t.id} can no longer be used`);
      }
      const token = await this.rekey(tx, m, author, 'its deployed OS joined');
      await tx.setMachineFacts(m.id, observed);
      const machine = { ...m, facts: observed };
      tx.emit(`machines.update.${m.id}`, publicMachine(machine));
      const current = (await tx.getJoinToken(t.id))!;
      const next = { ...current, machines: [m.id] };
      await tx.updateJoinToken(next);
      tx.emit(`jointokens.update.${t.id}`, viewJoinToken(next, this.now()));
      return { machine, token, rejoined: true };
    });
  }

  /**
   * Registers a machine booted into the discovery environment, presenting the discovery credential its
   * boot script carried (bound to `mac`, model/discovery.ts): the machine that boots from that MAC (or
   * the facts' SMBIOS UUID) gets a new token when it is in discovery (its bootenv is `discovery`); an
   * unknown one is created in environment `metal`, named `metal-<mac>`, booting `discovery`, with no
   * pipeline (classification gives it one). Facts are stored as reported, identity included.
   * @throws TaktError forbidden when the facts do not list `mac` (the credential is another machine's);
   *   conflict when the machine booting from `mac` is not in discovery (a discovery credential never takes
   *   over a machine in service), is run by a broker, or its agent is connected from another address.
   */
  async discover(mac: string, facts: Facts, from: string | null = null): Promise<Registered & { classification: ClassifyOutcome | { error: string } }> {
    const r = await this.registerDiscovered(mac, facts, from);
    // Classified after its facts are stored, in a transaction of its own: a rule that cannot apply (a
    // pipeline under way, a param without value) must not undo the registration. No match is a result.
    const author = `discovery:${mac}`;
    const classification = await this.engine.classifyMachine(r.machine.id, {}, author).catch((err: unknown) => ({ error: (err as Error).message }));
    const machine = 'after' in classification ? ((await this.store.getMachine(r.machine.id)) ?? r.machine) : r.machine;
    return { ...r, machine, classification };
  }

  private async registerDiscovered(mac: string, facts: Facts, from: string | null): Promise<Registered> {
    if (!facts.macs.includes(mac)) {
      throw new TaktError('forbidden', `this discovery credential was issued to the machine booting from ${mac}, and this host reports MAC addresses ${facts.macs.join(', ') || '(none)'}`);
    }
    const at = new Date(this.now()).toISOString();
    const observed: ObservedFacts = { ...facts, observedAt: at };
    const author = `discovery:${mac}`;
    const uuid = facts.productUuid ?? undefined;
    const seen = await this.bootMachine(this.store, mac, uuid);
    if (seen) this.checkDiscoverable(seen, mac, from);
    const made = seen
      ? undefined
      : await this.engine.newMachine({ name: await this.freeName(`metal-${mac.replace(/:/g, '')}`), environment: METAL_ENVIRONMENT, pipeline: null, profiles: [], broker: null, boot: { macs: [mac], ...(uuid ? { uuid } : {}), bootenv: DISCOVERY_BOOTENV } });
    return this.store.transact(async (tx) => {
      const known = await this.bootMachine(tx, mac, uuid);
      if (known) {
        const m = await tx.lockMachine(known.id);
        if (!m) throw new TaktError('conflict', `machine '${known.name}' was deleted while it registered; boot it again`);
        this.checkDiscoverable(m, mac, from);
        const token = await this.rekey(tx, m, author, 'discovered again');
        await tx.setMachineFacts(m.id, observed);
        tx.emit(`machines.update.${m.id}`, publicMachine({ ...m, facts: observed }));
        // A machine made ahead (qemu broker, an operator's --mac) registers for the first time: not "again".
        return { machine: { ...m, facts: observed }, token, rejoined: m.facts !== null };
      }
      made!.machine.facts = observed;
      await this.engine.insertMachine(tx, made!.machine, made!.token, author);
      return { machine: made!.machine, token: made!.token, rejoined: false };
    });
  }

  /** The machine that boots as `mac` / `uuid` by its boot settings (model/boot.ts bootsAs), if any. */
  private async bootMachine(reads: Pick<Reads, 'listMachinesWithBootText'>, mac: string, uuid: string | undefined): Promise<Machine | undefined> {
    const found = await reads.listMachinesWithBootText([mac, ...(uuid ? [uuid] : [])]);
    return found.find((m) => m.boot && bootsAs(m.boot, mac, uuid));
  }

  /**
   * Refuses a discovery registration for `m` unless `m` is a machine in discovery that nobody else runs.
   * @throws TaktError conflict saying why and what the operator can do.
   */
  private checkDiscoverable(m: Machine, mac: string, from: string | null): void {
    if (m.broker !== null && !NETWORK_BOOTED_BROKERS.has(m.broker)) {
      throw new TaktError('conflict', `the machine booting from ${mac} is '${m.name}', whose agent broker '${m.broker}' runs; a discovery credential cannot register it`);
    }
    if (m.boot?.bootenv !== DISCOVERY_BOOTENV) {
      throw new TaktError(
        'conflict',
        `the machine booting from ${mac} is '${m.name}', which boots '${m.boot?.bootenv ?? 'local'}', not discovery: a discovery credential never takes over a machine in service. To discover it again: takt machines update ${m.name} --bootenv discovery, then boot it`,
      );
    }
    this.checkNotLive(m, from);
  }

  /**
   * Stores what machine `machineId`'s agent observed (replacing what it reported before), except the
   * identity fields (machineId, productUuid, macs): those are kept as registration wrote them (none for a
   * machine that never registered), so an agent cannot claim another host's identity and redirect that
   * host's next re-join to its own machine. A re-join updates them. Returns the facts as stored.
   */
  async setFacts(machineId: string, facts: Facts): Promise<ObservedFacts> {
    return this.store.transact(async (tx) => {
      const m = await tx.lockMachine(machineId);
      if (!m) throw new TaktError('not_found', `machine '${machineId}' not found`);
      const observed: ObservedFacts = { ...keepIdentity(facts, m.facts), observedAt: new Date(this.now()).toISOString() };
      await tx.setMachineFacts(m.id, observed);
      tx.emit(`machines.update.${m.id}`, publicMachine(m));
      return observed;
    });
  }

  /**
   * Issues machine `idOrName` a new token and revokes the old one at once. A machine run by a broker is
   * refused: the broker holds its token and would keep starting its agent with the old one.
   */
  async rotateToken(idOrName: string, author: string): Promise<{ machine: Machine; token: string }> {
    const found = await this.engine.findMachine(idOrName);
    if (found.broker !== null) {
      throw new TaktError('conflict', `machine '${found.name}' is run by broker '${found.broker}', which holds its token; delete and create it again instead`);
    }
    return this.store.transact(async (tx) => {
      const m = await tx.lockMachine(found.id);
      if (!m) throw new TaktError('not_found', `machine '${idOrName}' not found`);
      return { machine: m, token: await this.rekey(tx, m, author, 'rotated') };
    });
  }

  /** The token as it stands, if a host may still use it at `now`; else why not. */
  private async usable(tokenId: string, now: number): Promise<JoinToken> {
    const t = await this.store.getJoinToken(tokenId);
    if (!t) throw new TaktError('unauthorized', `join token ${tokenId} does not exist`);
    const problem = joinTokenProblem(t, now);
    if (problem) throw new TaktError('unauthorized', problem);
    return t;
  }

  private async find(id: string): Promise<JoinToken> {
    const t = await this.store.getJoinToken(id);
    if (!t) throw new TaktError('not_found', `join token '${id}' not found`);
    return t;
  }

  /** A new token for `m` written in `tx`; listeners (the authenticator's cache) hear of it after commit. */
  private async rekey(tx: Tx, m: Machine, author: string, why: string): Promise<string> {
    const token = newMachineToken(m.id);
    await tx.setMachineTokenHash(m.id, sha256(token));
    tx.emit(`machines.token.${m.id}`, { id: m.id, name: m.name, by: author, reason: why });
    return token;
  }

  /**
   * The joined (not brokered) machine that was this host, if any: compared on the strongest identity each
   * stored machine has (facts.ts sameHost); the oldest when several match.
   */
  private async findHost(reads: Pick<Reads, 'listMachinesWithFactText'>, facts: Facts): Promise<Machine | undefined> {
    const texts = [facts.machineId, facts.productUuid, ...facts.macs].filter((x): x is string => !!x);
    let oldest: Machine | undefined;
    for (const text of texts) {
      for (const m of await reads.listMachinesWithFactText(text)) {
        if (m.broker !== null || !sameHost(facts, m.facts)) continue;
        if (!oldest || m.createdAt < oldest.createdAt) oldest = m;
      }
    }
    return oldest;
  }

  /**
   * Refuses to make this host machine `m` again when join token `t` could not have made it (it names
   * another machine), or when `m`'s agent is connected right now from an address other than `from`: two
   * hosts claim one identity (a cloned /etc/machine-id), and taking over would lock the running one out.
   * @throws TaktError conflict saying what happened and how to fix it.
   */
  private checkTakeOver(t: JoinToken, m: Machine, from: string | null): void {
    if (t.name !== null && t.name !== m.name) {
      throw new TaktError('conflict', `this host is already machine '${m.name}' (recognised by its machine identity), and join token ${t.id} is for a machine named '${t.name}': join it again with a token without a name (takt machines join), or delete machine '${m.name}' first`);
    }
    this.checkNotLive(m, from);
  }

  /** Refuses to re-key `m` while its agent is connected from an address other than `from` (a clone, a thief). */
  private checkNotLive(m: Machine, from: string | null): void {
    const agent = this.engine.withLiveness(m).agent;
    if (agent.connected && agent.via === 'agent' && agent.address !== null && from !== null && agent.address !== from) {
      throw new TaktError(
        'conflict',
        `this host has the same machine identity as machine '${m.name}', whose agent is connected right now from ${agent.address} (this host is ${from}); ` +
          `it is probably a clone of that host. Give this host its own machine-id (rm /etc/machine-id && systemd-machine-id-setup) and join again, ` +
          `or, if this host really replaces '${m.name}', stop the agent on ${agent.address} first`,
      );
    }
  }

  private async newMachine(t: JoinToken, facts: Facts, observed: ObservedFacts) {
    const name = t.name ?? (await this.freeName(machineNameFromHost(facts.hostname)));
    const made = await this.engine.newMachine({ name, environment: t.environment, pipeline: t.pipeline, profiles: t.profiles, broker: null });
    made.machine.facts = observed;
    return made;
  }

  /** `base`, else `base-2`, `base-3`… the first name no machine has. */
  private async freeName(base: string): Promise<string> {
    for (let i = 1; i <= MAX_NAME_SUFFIX; i++) {
      const name = i === 1 ? base : `${base.slice(0, 63 - String(i).length - 1)}-${i}`;
      if (!(await this.store.getMachineByName(name))) return name;
    }
    throw new TaktError('conflict', `machines named '${base}' through '${base}-${MAX_NAME_SUFFIX}' all exist; give the join token a name`);
  }
}

/**
 * A machine name from a hostname: lower-cased, the first DNS label kept whole when it is enough,
 * characters outside [a-z0-9._-] as `-`, at most 63 characters, starting with a letter or digit, and never
 * in the shape of a takt id (`m-1a2b`, which gets a `host-` prefix). An empty result is `host`.
 */
export function machineNameFromHost(hostname: string): string {
  let name = hostname
    .trim()
    .toLowerCase()
    .replace(/[^a-z0-9._-]+/g, '-')
    .replace(/^[^a-z0-9]+/, '')
    .slice(0, 63)
    .replace(/[.-]+$/, '');
  if (name === '') name = 'host';
  if (looksLikeId(name)) name = `host-${name}`.slice(0, 63);
  return name;
}

/**
 * The endpoint URL a join script and its agent use: an origin (scheme, host, port; no path, query or
 * credentials) whose host is an IP literal or an RFC 1123 name (it goes into a shell line and a script);
 * https, or http on a loopback IP literal or `localhost` only (a join token must not cross a network in
 * clear; a name like `127.0.0.1.nip.io` is not loopback).
 * @throws TaktError invalid at /url.
 */
/**
 * Whether a host reporting `facts` is machine `m` for a deploy token: one of its boot MACs, its SMBIOS
 * UUID, or the identity it registered with before (facts.ts sameHost) — what survives a reinstall.
 */
export function deployedHostIs(m: Pick<Machine, 'boot' | 'facts'>, facts: Facts): boolean {
  const macs = new Set(facts.macs.map((x) => x.toLowerCase()));
  if (m.boot?.macs.some((x) => macs.has(x.toLowerCase()))) return true;
  if (m.boot?.uuid && facts.productUuid && m.boot.uuid.toLowerCase() === facts.productUuid.toLowerCase()) return true;
  return m.facts !== null && sameHost({ ...facts, machineId: null }, { ...m.facts, machineId: null });
}

export function endpointUrl(text: string): string {
  let u: URL;
  try {
    u = new URL(text);
  } catch {
    throw new TaktError('invalid', `url '${text}' is not a URL; give the endpoint's address as remote hosts reach it, e.g. https://10.0.0.1:8092`, { path: '/url' });
  }
  if (u.username || u.password || (u.pathname !== '/' && u.pathname !== '') || u.search || u.hash) {
    throw new TaktError('invalid', `url '${text}' must be just scheme, host and port (e.g. https://10.0.0.1:8092)`, { path: '/url' });
  }
  if (!isValidHost(u.hostname)) {
    throw new TaktError('invalid', `url '${text}': its host must be an IP address or a DNS name (letters, digits, hyphens and dots; RFC 1123)`, { path: '/url' });
  }
  if (u.protocol === 'http:' && !isLoopbackHost(u.hostname)) {
    throw new TaktError('invalid', `url '${text}' is plain HTTP beyond loopback: the join token and the machine token would cross the network in clear; use the endpoint's https URL`, { path: '/url' });
  }
  if (u.protocol !== 'https:' && u.protocol !== 'http:') throw new TaktError('invalid', `url '${text}' must be https (or http on loopback)`, { path: '/url' });
  return u.origin;
}
