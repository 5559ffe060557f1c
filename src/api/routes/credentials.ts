/**
 * Credentials the endpoint uses to reach machines (SSH private keys for agentless machines), under
 * /api/v1/credentials. Admin only (no route here accepts a machine token). A key goes in with POST and
 * never comes out: answers carry the name, kind, key type, public-key fingerprint, the public key (for
 * authorized_keys) and which machines use it.
 */
import type { FastifyInstance } from 'fastify';
import { TaktError } from '../../model/errors.js';
import { author, type ApiContext } from '../context.js';
import { Name } from './schemas.js';

/** A credential as the API shows it: never the key. */
export interface CredentialAnswer {
  name: string;
  kind: 'ssh-key';
  keyType: string;
  fingerprint: string;
  publicKey: string;
  createdAt: string;
  usedBy: string[];
}

/** What the routes need of the credential store (src/brokers/ssh/credentials.ts implements it). */
export interface CredentialsPort {
  add(input: { name: string; kind: 'ssh-key'; privateKey: string; passphrase?: string }, author: string): Promise<CredentialAnswer>;
  list(): Promise<CredentialAnswer[]>;
  get(name: string): Promise<CredentialAnswer>;
  remove(name: string, author: string): Promise<CredentialAnswer>;
}

const createBody = {
  type: 'object',
  additionalProperties: false,
  required: ['name', 'kind', 'privateKey'],
  properties: {
    name: Name,
    kind: { enum: ['ssh-key'], description: 'ssh-key: a private key the endpoint logs in to agentless machines with' },
    privateKey: { type: 'string', minLength: 1, maxLength: 65536, description: 'the private key file (OpenSSH, PEM or PuTTY format); stored sealed, never shown again' },
    passphrase: { type: 'string', maxLength: 1024, description: "the key's passphrase, when it is encrypted; stored sealed" },
  },
} as const;

export function credentialRoutes(app: FastifyInstance, ctx: ApiContext) {
  const credentials = () => {
    if (!ctx.credentials) throw new TaktError('not_found', 'this endpoint keeps no credentials');
    return ctx.credentials;
  };
  app.get('/api/v1/credentials', { config: { permission: 'credentials:read' } }, async () => ({ items: await credentials().list() }));
  app.get('/api/v1/credentials/:name', { config: { permission: 'credentials:read' } }, async (req) => credentials().get((req.params as { name: string }).name));
  app.post('/api/v1/credentials', { config: { permission: 'credentials:admin' }, schema: { body: createBody } }, async (req, reply) => {
    const c = await credentials().add(req.body as Parameters<CredentialsPort['add']>[0], author(req));
    reply.code(201);
    return c;
  });
  app.delete('/api/v1/credentials/:name', { config: { permission: 'credentials:admin' } }, async (req) => credentials().remove((req.params as { name: string }).name, author(req)));
}
