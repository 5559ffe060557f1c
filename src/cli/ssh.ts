/** The `--ssh*` options of `takt machines create|update` as the API's `ssh` object. */
import { parseSshTarget } from '../model/ssh.js';
import { UsageError } from './usage.js';

export interface SshOptions {
  ssh?: string;
  sshKey?: string;
  sshRoot?: string;
  sshDir?: string;
  sshAcceptNewKey?: boolean;
}

/**
 * The body's `ssh` (undefined when no --ssh option is given). On create, --ssh and --ssh-key go
 * together; on update each is a change on its own, and '' for --ssh-root/--ssh-dir goes back to the default.
 * @throws UsageError naming the flag.
 */
export function sshBody(o: SshOptions, create: boolean): Record<string, unknown> | undefined {
  const given = o.ssh !== undefined || o.sshKey !== undefined || o.sshRoot !== undefined || o.sshDir !== undefined || o.sshAcceptNewKey;
  if (!given) return undefined;
  if (create && (o.ssh === undefined || o.sshKey === undefined)) throw new UsageError('an agentless machine needs both --ssh USER@HOST[:PORT] and --ssh-key CREDENTIAL', { path: o.ssh === undefined ? '--ssh' : '--ssh-key' });
  if (create && o.sshAcceptNewKey) throw new UsageError('--ssh-accept-new-key is for `takt machines update` (a new machine pins the key it first sees)', { path: '--ssh-accept-new-key' });
  const body: Record<string, unknown> = {};
  if (o.ssh !== undefined) Object.assign(body, parseSshTarget(o.ssh, '--ssh'));
  if (o.sshKey !== undefined) body.credential = o.sshKey;
  const path = (v: string | undefined) => (v === '' ? (create ? undefined : null) : v);
  if (o.sshRoot !== undefined && path(o.sshRoot) !== undefined) body.root = path(o.sshRoot);
  if (o.sshDir !== undefined && path(o.sshDir) !== undefined) body.dir = path(o.sshDir);
  if (o.sshAcceptNewKey) body.acceptNewHostKey = true;
  return body;
}
