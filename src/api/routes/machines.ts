import type { FastifyInstance } from 'fastify';
import { Describer } from '../../engine/describe.js';
import { publicJob, publicMachine } from '../../engine/engine.js';
import { TaktError } from '../../model/errors.js';
import { parseLabelSelector } from '../../model/labels.js';
import { NAME_PATTERN } from '../../model/content.js';
import { MACHINE_STATES, defaultEnvironment, type MachineState } from '../../model/machine.js';
import { MAX_JOB_ID_CHARS, type ClaimRequest, type ClaimResponse } from '../../model/protocol.js';
import type { SshSettings } from '../../model/ssh.js';
import type { BootSettings } from '../../model/boot.js';
import { requireOwnMachine, requireOwnMachineRef } from '../auth.js';
import { hostedHere } from '../hosts.js';
import { prepareReboot } from '../reboot.js';
import { approver, author, intQuery, whenGone, type ApiContext, type VmRequest } from '../context.js';
import { paramsObject, Name } from './schemas.js';

const sshTarget = {
  user: { type: 'string', minLength: 1, maxLength: 64, description: 'the user to log in as' },
  host: { type: 'string', minLength: 1, maxLength: 253, description: 'a DNS name or an IP address (IPv6 without brackets)' },
  port: { type: 'integer', minimum: 1, maximum: 65535, description: 'default 22' },
  credential: { ...Name, description: 'the ssh-key credential that logs in (POST /api/v1/credentials)' },
  root: { type: 'string', maxLength: 1024, description: 'what scripts see as TAKT_ROOT on the host (default /)' },
  dir: { type: 'string', maxLength: 1024, description: "takt's dir on the host (default /var/lib/takt-ssh for root, else ~/.takt)" },
} as const;

const sshCreate = {
  type: 'object',
  additionalProperties: false,
  required: ['user', 'host', 'credential'],
  properties: sshTarget,
  description: 'agentless: the endpoint runs the machine\'s jobs over SSH (broker ssh); its host key is pinned on first contact',
} as const;

const sshPatch = {
  type: 'object',
  additionalProperties: false,
  minProperties: 1,
  properties: {
    ...sshTarget,
    root: { anyOf: [sshTarget.root, { type: 'null' }] },
    dir: { anyOf: [sshTarget.dir, { type: 'null' }] },
    acceptNewHostKey: { type: 'boolean', description: 'pin the key the host offered instead of the pinned one (after checking it on the host)' },
  },
  description: 'agentless machines: change how the host is reached (a new user, host or port is pinned afresh), or accept its new host key',
} as const;

const bootProps = {
  macs: { type: 'array', minItems: 1, maxItems: 8, items: { type: 'string', maxLength: 17 }, description: 'MAC addresses it network-boots from, e.g. ["52:54:00:12:34:56"]' },
  uuid: { anyOf: [{ type: 'string', maxLength: 36 }, { type: 'null' }], description: 'its SMBIOS system UUID (DHCP option 97, iPXE ${uuid})' },
  firmware: { anyOf: [{ enum: ['bios', 'uefi'] }, { type: 'null' }], description: 'bios or uefi; null: as the booting firmware says' },
  bootenv: { ...Name, description: 'the boot environment it boots into next (a pack\'s bootenv, or local: its disk)' },
  ip: { anyOf: [{ type: 'string', maxLength: 15 }, { type: 'null' }], description: 'an IPv4 address reserved for it (takt serve --dhcp full gives it this address); null forgets it' },
} as const;

const bootCreate = {
  type: 'object',
  additionalProperties: false,
  required: ['macs'],
  properties: bootProps,
  description: 'network-booted machines (bare metal, VMs): how the boot service knows it, and what it boots',
} as const;

const bootPatch = {
  type: 'object',
  additionalProperties: false,
  minProperties: 1,
  properties: bootProps,
  description: 'change how a network-booted machine boots; on a machine without boot settings, macs is required',
} as const;

const powerConfigSchema = {
  type: 'object',
  required: ['driver'],
  maxProperties: 16,
  properties: { driver: { type: 'string', maxLength: 32, description: 'qmp, ipmi, redfish or manual' } },
  additionalProperties: { anyOf: [{ type: 'string', maxLength: 1024 }, { type: 'number' }, { type: 'boolean' }] },
  description: "how takt switches the machine's power: the driver and its settings, e.g. {\"driver\": \"ipmi\", \"host\": \"10.0.0.9\", \"user\": \"admin\", \"passwordParam\": \"bmc_password\"}; credentials only by secure param name",
} as const;

const vmSchema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    firmware: { enum: ['bios', 'uefi'], description: 'SeaBIOS (default) or OVMF' },
    memoryMiB: { type: 'integer', minimum: 64, maximum: 65536, description: 'guest memory in MiB (default 512)' },
    diskGiB: { type: 'integer', minimum: 1, maximum: 2048, description: 'qcow2 disk size in GiB (default 8)' },
    bootenv: { ...Name, description: 'the boot environment it boots into (default local: its disk)' },
  },
  description: 'the qemu broker: the VM to make (its MAC, SMBIOS UUID and QMP power configuration are chosen by the broker)',
} as const;

const createBody = {
  type: 'object',
  additionalProperties: false,
  properties: {
    name: { ...Name, description: 'machine name; with count > 1 the prefix of generated names' },
    environment: { ...Name, description: "picks the tasks' variants; default: the broker's, with ssh settings ssh, with boot settings metal, else remote" },
    broker: { ...Name, description: 'create the machines through this broker (e.g. local), which also starts their agents' },
    count: { type: 'integer', minimum: 1, maximum: 1000 },
    pipeline: { anyOf: [Name, { type: 'null' }] },
    params: paramsObject,
    profiles: { type: 'array', items: Name },
    labels: { type: 'object', maxProperties: 64, additionalProperties: { type: 'string', maxLength: 63 }, description: 'key=value tags, e.g. {"role": "web"}' },
    ssh: sshCreate,
    boot: bootCreate,
    powerConfig: powerConfigSchema,
    vm: vmSchema,
    allowUndeclared: { type: 'boolean', description: 'store params that no param definition or task declares (default false: refused with a suggestion)' },
  },
} as const;

const patchBody = {
  type: 'object',
  additionalProperties: false,
  minProperties: 1,
  properties: {
    name: Name,
    environment: Name,
    pipeline: { anyOf: [Name, { type: 'null' }] },
    params: { ...paramsObject, description: 'merged into the machine params; null removes one' },
    profiles: { type: 'array', items: Name },
    labels: { type: 'object', maxProperties: 64, additionalProperties: { anyOf: [{ type: 'string', maxLength: 63 }, { type: 'null' }] }, description: 'merged into the machine labels; null removes one' },
    ssh: sshPatch,
    boot: bootPatch,
    powerConfig: { anyOf: [powerConfigSchema, { type: 'null' }], description: 'replaces the power configuration; null removes it' },
    allowUndeclared: { type: 'boolean', description: 'store params that no param definition or task declares (default false: refused with a suggestion)' },
  },
} as const;

interface CreateBody {
  name?: string;
  environment?: string;
  broker?: string;
  count?: number;
  pipeline?: string | null;
  params?: Record<string, unknown>;
  profiles?: string[];
  labels?: Record<string, string>;
  ssh?: SshSettings;
  boot?: BootSettings;
  powerConfig?: Record<string, unknown>;
  vm?: VmRequest;
  allowUndeclared?: boolean;
}

export function machineRoutes(app: FastifyInstance, ctx: ApiContext) {
  const { engine, store, brokers, records } = ctx;

  app.get('/api/v1/machines', { config: { permission: 'machines:read', scope: 'list' } }, async (req) => {
    const q = req.query as Record<string, string | undefined>;
    // `waiting-for-agent` is the status the STATE column shows (running, with work and no agent), so the
    // filter takes it too: running machines, narrowed in memory to those without an agent.
    const waiting = q.state === 'waiting-for-agent';
    if (q.state && !waiting && !MACHINE_STATES.includes(q.state as MachineState)) {
      throw new TaktError('bad_request', `state must be one of ${MACHINE_STATES.join(', ')}, waiting-for-agent`, { path: 'state' });
    }
    const filter = {
      state: (waiting ? 'running' : q.state) as MachineState | undefined,
      pipeline: q.pipeline,
      environment: q.environment,
      broker: q.broker,
      name: q.name,
    };
    if (q.stale !== undefined && q.stale !== 'true' && q.stale !== 'false') throw new TaktError('bad_request', "query parameter 'stale' must be true or false", { path: 'stale' });
    const limit = intQuery(q.limit, 'limit', 100, 1000)!;
    const offset = intQuery(q.offset, 'offset', 0)!;
    const labels = q.selector === undefined ? undefined : parseLabelSelector(q.selector);
    if (!waiting && q.builtWith === undefined && q.stale === undefined && !labels?.length) {
      const [items, total] = await Promise.all([store.listMachines({ ...filter, limit, offset }), store.countMachines(filter)]);
      return { items: items.map((m) => publicMachine(engine.withLiveness(m))), total };
    }
    // Build-record and label filters are applied in memory, so they page after filtering.
    const matched = await records.select({ ...filter, labels, builtWith: q.builtWith, stale: q.stale === undefined ? undefined : q.stale !== 'false' });
    const items = matched
      .map(({ machine, stale }) => (stale ? { ...publicMachine(engine.withLiveness(machine)), stale } : publicMachine(engine.withLiveness(machine))))
      .filter((m) => !waiting || m.status === 'waiting-for-agent');
    return { items: items.slice(offset, offset + limit), total: items.length };
  });

  const describer = new Describer(engine, store);
  app.get('/api/v1/machines/:id/describe', { config: { permission: 'machines:read', scope: 'machine' } }, async (req) => {
    const q = req.query as Record<string, string | undefined>;
    return describer.describe((req.params as { id: string }).id, { jobs: intQuery(q.jobs, 'jobs', 10, 100), events: intQuery(q.events, 'events', 10, 100) });
  });

  app.get('/api/v1/machines/:id/record', { config: { permission: 'machines:read', scope: 'machine' } }, async (req) => records.record(await engine.findMachine((req.params as { id: string }).id)));

  app.post('/api/v1/machines', { config: { permission: 'machines:write' }, schema: { body: createBody } }, async (req, reply) => {
    const body = req.body as CreateBody;
    if (body.ssh) {
      // An agentless machine is one host: the ssh broker drives it.
      if (body.broker !== undefined && body.broker !== 'ssh') throw new TaktError('invalid', `a machine with ssh settings is driven by the ssh broker, not '${body.broker}'`, { path: '/broker' });
      if ((body.count ?? 1) !== 1) throw new TaktError('invalid', 'a machine with ssh settings is one host: count must be 1', { path: '/count' });
      if (!body.name) throw new TaktError('invalid', "missing required field 'name'", { path: '/name' });
      body.broker = 'ssh';
    } else if (body.broker === 'ssh') {
      throw new TaktError('invalid', 'the ssh broker needs the ssh settings: user, host and credential', { path: '/ssh' });
    }
    // A MAC boots one machine: several machines from one request cannot share boot settings.
    if (body.boot && (body.count ?? 1) !== 1) throw new TaktError('invalid', 'a network-booted machine has its own MAC addresses: count must be 1', { path: '/count' });
    const broker = body.broker ? brokers.get(body.broker) : undefined;
    if (body.broker && !broker) {
      throw new TaktError('invalid', `unknown broker '${body.broker}'; available: ${[...brokers.keys()].join(', ') || 'none'}`, { path: '/broker' });
    }
    if (body.vm && !broker?.plan) throw new TaktError('invalid', 'vm settings are for the qemu broker (--broker qemu)', { path: '/vm' });
    if (broker?.plan) {
      // The broker chooses the VM's identity (MAC, UUID) and how it is powered (its QMP socket).
      if ((body.count ?? 1) !== 1) throw new TaktError('invalid', `the ${broker.name} broker makes one VM per request: count must be 1`, { path: '/count' });
      if (!body.name) throw new TaktError('invalid', "missing required field 'name'", { path: '/name' });
      if (body.boot || body.powerConfig) throw new TaktError('invalid', `the ${broker.name} broker chooses the VM's boot settings and power configuration itself (give vm.firmware, vm.bootenv)`, { path: body.powerConfig ? '/powerConfig' : '/boot' });
    }
    // A broker that cannot work on this host says so before any machine is recorded.
    await broker?.check();
    const count = body.count ?? 1;
    if (count === 1 && !body.name && !broker) throw new TaktError('invalid', 'missing required field \'name\'', { path: '/name' });
    const prefix = body.name ?? broker?.name ?? 'machine';
    const names = count === 1 && body.name ? [body.name] : await freeNames(ctx, prefix, count);
    const created = [];
    for (const name of names) {
      const planned = broker?.plan?.(name, body.vm ?? {});
      const { machine, token } = await engine.createMachine(
        {
          ...(planned ? { id: planned.id, boot: planned.boot, powerConfig: planned.powerConfig } : {}),
          name,
          environment: body.environment ?? defaultEnvironment({ brokerEnvironment: broker?.environment, ssh: body.ssh, boot: body.boot ?? planned?.boot }),
          broker: broker?.name ?? null,
          pipeline: body.pipeline ?? null,
          params: body.params,
          profiles: body.profiles,
          labels: body.labels,
          allowUndeclared: body.allowUndeclared,
          ...(body.ssh ? { ssh: body.ssh } : {}),
          ...(body.boot && !planned ? { boot: body.boot } : {}),
          ...(body.powerConfig && !planned ? { powerConfig: body.powerConfig } : {}),
          // A sandbox or VM made here stays with this replica (api/hosts.ts).
          ...(broker?.hostBound && ctx.hostId !== undefined ? { host: ctx.hostId } : {}),
        },
        author(req),
      );
      if (broker) {
        try {
          await broker.create(machine, token, body.vm);
        } catch (err) {
          // No machine without its agent: the record goes again (history shows both steps).
          await engine.deleteMachine(machine.id, author(req));
          throw err;
        }
        created.push(publicMachine(machine));
      } else {
        // Shown once: only its hash is stored.
        created.push({ ...publicMachine(machine), token });
      }
    }
    reply.code(201);
    return { items: created, ...(broker?.notice ? { warnings: [broker.notice] } : {}) };
  });

  app.get('/api/v1/machines/:id', { config: { permission: 'machines:read', scope: 'machine', machine: true } }, async (req) => {
    const ref = (req.params as { id: string }).id;
    await requireOwnMachineRef(req.principal, ref, store);
    const m = await engine.findMachine(ref);
    // Facts (observed inventory) only here: lists and events leave them out.
    return { ...publicMachine(engine.withLiveness(m)), facts: m.facts };
  });

  app.patch('/api/v1/machines/:id', { config: { permission: 'machines:write', scope: 'machine' }, schema: { body: patchBody } }, async (req) => {
    return publicMachine(await engine.updateMachine((req.params as { id: string }).id, req.body as object, author(req)));
  });

  app.delete('/api/v1/machines/:id', { config: { permission: 'machines:write', scope: 'machine' } }, async (req) => {
    const m = await engine.deleteMachine((req.params as { id: string }).id, author(req));
    const broker = m.broker ? brokers.get(m.broker) : undefined;
    // Another replica's sandbox or VM is not on this host: its owner destroys it when it hears the
    // machines.delete event (cli/serve.ts).
    if (broker && (!broker.hostBound || hostedHere(m, ctx.hostId))) await broker.destroy(m);
    return publicMachine(m);
  });

  // A powered-off machine stays off through a resume or restart unless the body says `powerOn: true`.
  const powerBody = {
    schema: {
      body: {
        type: ['object', 'null'],
        additionalProperties: false,
        properties: { powerOn: { type: 'boolean', description: 'also power the machine on (default: a powered-off machine stays off)' } },
      },
    },
  };
  const powerOpt = (body: unknown) => ({ powerOn: (body as { powerOn?: boolean } | null)?.powerOn === true });
  app.post('/api/v1/machines/:id/resume', { ...powerBody, config: { permission: 'machines:run', scope: 'machine' } }, async (req) => publicMachine(await engine.resumeMachine((req.params as { id: string }).id, author(req), powerOpt(req.body))));
  app.post('/api/v1/machines/:id/rebuild', { ...powerBody, config: { permission: 'machines:run', scope: 'machine' } }, async (req) => publicMachine(await engine.rebuildMachine((req.params as { id: string }).id, author(req), powerOpt(req.body))));
  app.post('/api/v1/machines/:id/restart', { ...powerBody, config: { permission: 'machines:run', scope: 'machine' } }, async (req) => publicMachine(await engine.restartMachine((req.params as { id: string }).id, author(req), powerOpt(req.body))));
  // Pause the pipeline where it stands: the running job finishes first (or, with `cancel`, is cancelled and
  // the machine pauses on its task). `already`: it was paused before; `cancelled`: the job cancelled, if any.
  app.post(
    '/api/v1/machines/:id/pause',
    {
      config: { permission: 'machines:run', scope: 'machine' },
      schema: {
        body: {
          type: ['object', 'null'],
          additionalProperties: false,
          properties: { cancel: { type: 'boolean', description: 'cancel the running job (the machine pauses on its task)' }, reason: { type: 'string', minLength: 1, maxLength: 2000 } },
        },
      },
    },
    async (req) => {
      const body = (req.body ?? {}) as { cancel?: boolean; reason?: string };
      const r = await engine.pauseMachine((req.params as { id: string }).id, author(req), { cancel: body.cancel, why: body.reason });
      return { machine: publicMachine(engine.withLiveness(r.machine)), already: r.already, cancelled: r.cancelled ? publicJob(r.cancelled) : null };
    },
  );
  // Power. A machine with a power configuration is switched by its driver first (a BMC that does not
  // answer is a 503 with the driver's words, and nothing is recorded); then its desired power is recorded
  // as for broker machines, whose broker acts on that record (local, netns). Machine tokens may act on
  // their own machine only.
  const powerOf = () => {
    if (!ctx.power) throw new TaktError('unavailable', 'this endpoint has no power drivers');
    return ctx.power;
  };
  app.get('/api/v1/machines/:id/power', { config: { permission: 'machines:read', scope: 'machine', machine: true } }, async (req) => {
    const ref = (req.params as { id: string }).id;
    await requireOwnMachineRef(req.principal, ref, store);
    const m = await engine.findMachine(ref);
    const s = await powerOf().status(m);
    return { machine: m.name, desired: m.power, driver: s.driver, state: s.state };
  });
  app.post(
    '/api/v1/machines/:id/power',
    {
      config: { permission: 'machines:run', scope: 'machine', machine: true },
      schema: {
        body: {
          type: 'object',
          additionalProperties: false,
          minProperties: 1,
          properties: {
            power: { enum: ['on', 'off', 'cycle'], description: 'cycle: reset (or power on when off); needs a power configuration' },
            nextBoot: { enum: ['pxe', 'disk'], description: 'the first boot device from the next boot on; needs a power configuration' },
            persistent: { type: 'boolean', description: 'with nextBoot: for every later boot too (default: the next boot only, where the driver can)' },
          },
        },
      },
    },
    async (req) => {
      const ref = (req.params as { id: string }).id;
      await requireOwnMachineRef(req.principal, ref, store);
      const body = req.body as { power?: 'on' | 'off' | 'cycle'; nextBoot?: 'pxe' | 'disk'; persistent?: boolean };
      if (body.power === undefined && body.nextBoot === undefined) throw new TaktError('bad_request', 'give power (on, off, cycle) or nextBoot (pxe, disk)', { path: '/power' });
      if (body.persistent !== undefined && body.nextBoot === undefined) throw new TaktError('bad_request', 'persistent goes with nextBoot', { path: '/persistent' });
      const m = await engine.findMachine(ref);
      if (!m.powerConfig) {
        if (body.power === 'cycle' || body.nextBoot !== undefined) {
          throw new TaktError('conflict', `${m.name} has no power configuration, so it can only be powered on or off${m.broker ? ` (by its broker, ${m.broker})` : ''}: give it one with takt machines update ${m.name} --power-driver qmp|ipmi|redfish|manual --power-opt KEY=VALUE`, { path: body.nextBoot !== undefined ? '/nextBoot' : '/power' });
        }
        return publicMachine(await engine.setPower(m.id, body.power!, author(req)));
      }
      const power = powerOf();
      const result: Record<string, unknown> = {};
      // Boot device first: a cycle then boots from it.
      if (body.nextBoot !== undefined) result.nextBoot = await power.nextBoot(m, body.nextBoot, body.persistent === true);
      if (body.power !== undefined) result.power = await power.act(m, body.power);
      const desired = body.power === 'off' ? 'off' : body.power === undefined ? m.power : 'on';
      const after = desired !== m.power ? await engine.setPower(m.id, desired, author(req)) : m;
      return { ...publicMachine(after), result };
    },
  );

  app.post(
    '/api/v1/machines/:id/approve',
    { config: { permission: 'machines:approve', scope: 'machine' }, schema: { body: { type: 'object', additionalProperties: false, properties: { comment: { type: 'string', maxLength: 2000 } } } } },
    async (req) => publicMachine(await engine.approveMachine((req.params as { id: string }).id, approver(req), (req.body as { comment?: string } | undefined)?.comment)),
  );
  app.post(
    '/api/v1/machines/:id/reject',
    { config: { permission: 'machines:approve', scope: 'machine' }, schema: { body: { type: 'object', additionalProperties: false, required: ['reason'], properties: { reason: { type: 'string', minLength: 1, maxLength: 2000 } } } } },
    async (req) => publicMachine(await engine.rejectMachine((req.params as { id: string }).id, approver(req), (req.body as { reason: string }).reason)),
  );

  // Classification (engine/classify.ts): the first matching rule gives the machine profiles, environment,
  // pipeline; 200 with `rule: null` and the nearest rules' reasons when none matches.
  app.post(
    '/api/v1/machines/:id/classify',
    {
      config: { permission: 'machines:write', scope: 'machine' },
      schema: {
        body: {
          type: ['object', 'null'],
          additionalProperties: false,
          properties: {
            dryRun: { type: 'boolean', description: 'say which rule matches and what it would change; change nothing' },
            force: { type: 'boolean', description: 'replace a pipeline that is under way (running, paused, stopped, awaiting approval)' },
          },
        },
      },
    },
    async (req) => {
      const body = (req.body ?? {}) as { dryRun?: boolean; force?: boolean };
      return engine.classifyMachine((req.params as { id: string }).id, { dryRun: body.dryRun === true, force: body.force === true }, author(req));
    },
  );

  app.get('/api/v1/machines/:id/plan', { config: { permission: 'machines:read', scope: 'machine' } }, async (req) => engine.plan((req.params as { id: string }).id));

  app.get('/api/v1/machines/:id/render', { config: { permission: 'machines:read', scope: 'machine' } }, async (req) => {
    const q = req.query as { task?: string };
    if (!q.task) throw new TaktError('bad_request', 'query parameter \'task\' is required', { path: 'task' });
    const p = await engine.render((req.params as { id: string }).id, q.task);
    const { script: _clear, agentParams: _agentParams, ...shown } = p;
    return shown;
  });

  // A claim's body is empty, or says which job the agent last received (a job id, or null for none).
  const claimBody = {
    type: ['object', 'null'],
    additionalProperties: false,
    properties: {
      lastJob: { anyOf: [{ type: 'string', minLength: 1, maxLength: MAX_JOB_ID_CHARS }, { type: 'null' }] },
      bootenv: { type: 'string', pattern: NAME_PATTERN, maxLength: 64, description: 'the bootenv the machine booted (takt.bootenv= on its kernel command line; local without one)' },
    },
  } as const;
  app.post('/api/v1/machines/:id/claim', { config: { permission: 'machines:admin', scope: 'machine', machine: true }, schema: { body: claimBody } }, async (req, reply) => {
    const id = (req.params as { id: string }).id;
    requireOwnMachine(req.principal, id);
    const wait = intQuery((req.query as { wait?: string }).wait, 'wait', 0, 60)!;
    // The agent has gone when the connection closes before the answer is written.
    const aborted = whenGone(reply.raw);
    const body = req.body as ClaimRequest | null | undefined;
    const lastJob = typeof body?.lastJob === 'string' || body?.lastJob === null ? body.lastJob : undefined;
    // The OS it booted has an agent that claims: a boot from its disk that was waited for has happened.
    if (body?.bootenv) ctx.power?.agentBooted(id, body.bootenv);
    let answer: ClaimResponse;
    try {
      answer = await engine.claim(id, wait * 1000, aborted.signal, lastJob, body?.bootenv);
    } finally {
      aborted.done();
    }
    // A stage needs another bootenv: before the agent reboots into it, its boot device is set through
    // the power driver and its network boot is waited for.
    if (answer.action === 'reboot' && ctx.power) await prepareReboot(ctx, await engine.findMachine(id), 'the reboot into its stage\'s bootenv');
    return answer;
  });
}

async function freeNames(ctx: ApiContext, prefix: string, count: number): Promise<string[]> {
  const taken = new Set((await ctx.store.listMachines({ name: prefix, limit: 1000 })).map((m) => m.name));
  const names: string[] = [];
  for (let i = 1; names.length < count; i++) {
    const n = `${prefix}-${i}`;
    if (!taken.has(n)) names.push(n);
  }
  return names;
}
