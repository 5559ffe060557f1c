/**
 * A Redfish responder for tests: a STAND-IN for a BMC, because no Redfish emulator installs here (the
 * known ones — sushy-tools, DMTF's Redfish-Mockup-Server and Redfish-Interface-Emulator — are pip or Docker
 * only; Debian ships only clients). It implements the subset of DMTF DSP0266 / DSP2046 the `redfish` power
 * driver uses, on HTTPS at 127.0.0.1 with a certificate from takt's own CA code (src/api/tls.ts):
 *
 *   GET  /redfish/v1                         ServiceRoot (no auth, as DSP0266 §13.3.1 allows)
 *   GET  /redfish/v1/Systems                 the collection, with `systems` members
 *   GET  /redfish/v1/Systems/<id>            ComputerSystem: PowerState, Boot (+ AllowableValues), the
 *                                            Reset action with ResetType@Redfish.AllowableValues, an ETag
 *   POST /redfish/v1/Systems/<id>/Actions/ComputerSystem.Reset   {ResetType}
 *   PATCH /redfish/v1/Systems/<id>           {Boot: {BootSourceOverrideTarget, BootSourceOverrideEnabled}}
 *
 * Every other answer is a Redfish error body with `@Message.ExtendedInfo` (Base message registry ids).
 * Basic auth is required on everything but the service root. The machine behind it is a state record,
 * not a VM: the power state, boot override, and every reset asked for (in `resets`).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { X509Certificate } from 'node:crypto';
import { TlsManager } from '../../src/api/tls.js';

export interface RedfishResponderOptions {
  user?: string;
  password?: string;
  /** Member ids of /redfish/v1/Systems (default ['1']). */
  systems?: string[];
  /** ResetType@Redfish.AllowableValues (default the common set); null: not listed (driver must assume). */
  resetTypes?: string[] | null;
  /** List the reset types through an ActionInfo resource instead of on the action. */
  actionInfo?: boolean;
  /** BootSourceOverrideEnabled@Redfish.AllowableValues (default Once, Continuous, Disabled). */
  overrideEnabled?: string[];
  /** GracefulShutdown is accepted but the OS ignores it (the power stays on). */
  ignoreGraceful?: boolean;
  /** Refuse PATCH without a matching If-Match (412), as some BMCs do. */
  requireIfMatch?: boolean;
}

export interface RedfishResponder {
  url: string;
  port: number;
  /** PEM of the CA that issued the responder's certificate. */
  caPem: string;
  /** SHA-256 fingerprint of the responder's leaf certificate, as Node's fingerprint256 prints it. */
  fingerprint: string;
  state: { power: 'On' | 'Off'; target: string; enabled: string; etag: number };
  /** ResetTypes asked for, in order. */
  resets: string[];
  /** Requests seen: method, path, whether they carried an Authorization header. */
  requests: Array<{ method: string; path: string; auth: boolean }>;
  close(): Promise<void>;
}

const DEFAULT_RESETS = ['On', 'ForceOff', 'GracefulShutdown', 'GracefulRestart', 'ForceRestart', 'PushPowerButton'];

/** Starts the responder on 127.0.0.1 at a random port. */
export async function startRedfish(o: RedfishResponderOptions = {}): Promise<RedfishResponder> {
  const dir = mkdtempSync(join(tmpdir(), 'takt-redfish-'));
  const tls = new TlsManager({ dataDir: dir, names: ['127.0.0.1'] });
  await tls.ensure();
  const m = tls.material;
  const user = o.user ?? 'admin';
  const password = o.password ?? 'pa55word';
  const systems = o.systems ?? ['1'];
  const resetTypes = o.resetTypes === undefined ? DEFAULT_RESETS : o.resetTypes;
  const enabledAllowed = o.overrideEnabled ?? ['Once', 'Continuous', 'Disabled'];
  const state: RedfishResponder['state'] = { power: 'Off', target: 'None', enabled: 'Disabled', etag: 1 };
  const resets: string[] = [];
  const requests: RedfishResponder['requests'] = [];

  const send = (res: ServerResponse, status: number, body?: unknown, headers: Record<string, string> = {}) => {
    const text = body === undefined ? '' : JSON.stringify(body);
    res.writeHead(status, { 'content-type': 'application/json', 'odata-version': '4.0', ...headers });
    res.end(text);
  };
  const error = (res: ServerResponse, status: number, id: string, message: string, resolution?: string, headers?: Record<string, string>) =>
    send(res, status, { error: { code: `Base.1.8.${id}`, message: 'See @Message.ExtendedInfo for more information.', '@Message.ExtendedInfo': [{ '@odata.type': '#Message.v1_1_1.Message', MessageId: `Base.1.8.${id}`, Message: message, Severity: 'Warning', ...(resolution ? { Resolution: resolution } : {}) }] } }, headers);

  const system = (id: string) => {
    const path = `/redfish/v1/Systems/${id}`;
    const action: Record<string, unknown> = { target: `${path}/Actions/ComputerSystem.Reset` };
    if (o.actionInfo) action['@Redfish.ActionInfo'] = `${path}/ResetActionInfo`;
    else if (resetTypes) action['ResetType@Redfish.AllowableValues'] = resetTypes;
    return {
      '@odata.id': path,
      '@odata.type': '#ComputerSystem.v1_20_0.ComputerSystem',
      '@odata.etag': `W/"${state.etag}"`,
      Id: id,
      Name: `System ${id}`,
      PowerState: state.power,
      Boot: {
        BootSourceOverrideTarget: state.target,
        BootSourceOverrideEnabled: state.enabled,
        'BootSourceOverrideTarget@Redfish.AllowableValues': ['None', 'Pxe', 'Hdd', 'Cd', 'BiosSetup'],
        'BootSourceOverrideEnabled@Redfish.AllowableValues': enabledAllowed,
      },
      Actions: { '#ComputerSystem.Reset': action },
    };
  };

  const readBody = async (req: IncomingMessage): Promise<unknown> => {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const text = Buffer.concat(chunks).toString('utf8');
    return text ? JSON.parse(text) : undefined;
  };

  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    const path = (req.url ?? '/').split('?')[0]!.replace(/\/$/, '');
    const method = req.method ?? 'GET';
    const auth = req.headers.authorization;
    requests.push({ method, path, auth: auth !== undefined });
    if (method === 'GET' && path === '/redfish/v1') return send(res, 200, { '@odata.id': '/redfish/v1', Id: 'RootService', RedfishVersion: '1.15.0', Systems: { '@odata.id': '/redfish/v1/Systems' } });
    if (auth !== `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`) {
      return error(res, 401, 'NoValidSession', 'There is no valid session established with the implementation.', 'Establish a session before attempting any operations.', { 'www-authenticate': 'Basic realm="redfish"' });
    }
    if (method === 'GET' && path === '/redfish/v1/Systems') {
      return send(res, 200, { '@odata.id': '/redfish/v1/Systems', Name: 'Computer System Collection', 'Members@odata.count': systems.length, Members: systems.map((id) => ({ '@odata.id': `/redfish/v1/Systems/${id}` })) });
    }
    const m = /^\/redfish\/v1\/Systems\/([^/]+)(\/.*)?$/.exec(path);
    if (!m || !systems.includes(m[1]!)) return error(res, 404, 'ResourceMissingAtURI', `The resource at the URI ${path} was not found.`);
    const id = m[1]!;
    const rest = m[2] ?? '';
    if (method === 'GET' && rest === '') return send(res, 200, system(id), { etag: `W/"${state.etag}"` });
    if (method === 'GET' && rest === '/ResetActionInfo') {
      return send(res, 200, { '@odata.id': path, Id: 'ResetActionInfo', Parameters: [{ Name: 'ResetType', Required: true, DataType: 'String', AllowableValues: resetTypes ?? DEFAULT_RESETS }] });
    }
    if (method === 'POST' && rest === '/Actions/ComputerSystem.Reset') {
      const body = (await readBody(req)) as { ResetType?: string } | undefined;
      const type = body?.ResetType;
      if (!type) return error(res, 400, 'ActionParameterMissing', 'The action ComputerSystem.Reset requires the parameter ResetType to be present in the request body.');
      if (!(resetTypes ?? DEFAULT_RESETS).includes(type)) {
        return error(res, 400, 'ActionParameterValueNotInList', `The value '${type}' for the parameter ResetType in the action ComputerSystem.Reset is not in the list of acceptable values.`, 'Choose a value from the enumeration list that the implementation can support and resubmit the request if the operation failed.');
      }
      resets.push(type);
      if (type === 'On' || type === 'ForceOn') state.power = 'On';
      else if (type === 'ForceOff') state.power = 'Off';
      else if (type === 'GracefulShutdown') state.power = o.ignoreGraceful ? state.power : 'Off';
      else if (type === 'PushPowerButton') state.power = state.power === 'On' ? 'Off' : 'On';
      else if (type === 'PowerCycle' || type === 'ForceRestart' || type === 'GracefulRestart') {
        if (state.power === 'Off') return error(res, 409, 'ActionNotSupported', `The action ${type} is not supported while the system is off.`);
        // A restart consumes a one-time boot override, as a real BMC does after the boot it applied to.
        if (state.enabled === 'Once') state.enabled = 'Disabled';
      }
      state.etag++;
      res.writeHead(204);
      return res.end();
    }
    if (method === 'PATCH' && rest === '') {
      if (o.requireIfMatch && req.headers['if-match'] !== `W/"${state.etag}"`) {
        return error(res, 412, 'PreconditionFailed', 'The ETag supplied did not match the ETag required to change this resource.', 'Try the operation again using the appropriate ETag.');
      }
      const body = (await readBody(req)) as { Boot?: { BootSourceOverrideTarget?: string; BootSourceOverrideEnabled?: string } } | undefined;
      const boot = body?.Boot ?? {};
      const targets = ['None', 'Pxe', 'Hdd', 'Cd', 'BiosSetup'];
      if (boot.BootSourceOverrideTarget !== undefined && !targets.includes(boot.BootSourceOverrideTarget)) {
        return error(res, 400, 'PropertyValueNotInList', `The value '${boot.BootSourceOverrideTarget}' for the property BootSourceOverrideTarget is not in the list of acceptable values.`);
      }
      if (boot.BootSourceOverrideEnabled !== undefined && !enabledAllowed.includes(boot.BootSourceOverrideEnabled)) {
        return error(res, 400, 'PropertyValueNotInList', `The value '${boot.BootSourceOverrideEnabled}' for the property BootSourceOverrideEnabled is not in the list of acceptable values.`);
      }
      if (boot.BootSourceOverrideTarget !== undefined) state.target = boot.BootSourceOverrideTarget;
      if (boot.BootSourceOverrideEnabled !== undefined) state.enabled = boot.BootSourceOverrideEnabled;
      state.etag++;
      return send(res, 200, system(id), { etag: `W/"${state.etag}"` });
    }
    return error(res, 405, 'OperationNotAllowed', `The HTTP method ${method} is not allowed on ${path}.`);
  };

  const server: Server = createServer({ cert: m.cert, key: m.key }, (req, res) => {
    handle(req, res).catch((err: unknown) => error(res, 500, 'InternalError', `The request failed due to an internal service error: ${(err as Error).message}`));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `https://127.0.0.1:${port}`,
    port,
    caPem: m.caPem,
    fingerprint: new X509Certificate(m.cert).fingerprint256,
    state,
    resets,
    requests,
    close: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
