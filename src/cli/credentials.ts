/**
 * `takt credentials add|list|get|remove`: the SSH keys the endpoint logs in to agentless machines with.
 * A key's passphrase is read from the terminal (echo off) or, with --passphrase-stdin, from the first
 * line of standard input — never from the command line, where `ps` and shell history would show it.
 */
import { readFile } from 'node:fs/promises';
import type { Command } from 'commander';
import { pc } from './color.js';
import type { ApiClient } from '../client/http.js';
import { TaktError } from '../model/errors.js';
import type { GlobalOptions } from './client.js';
import { print, renderTable, shown } from './output.js';
import { examples } from './help.js';

interface CredentialView {
  name: string;
  kind: string;
  keyType: string;
  fingerprint: string;
  publicKey: string;
  createdAt: string;
  usedBy: string[];
}

const enc = encodeURIComponent;

const columns = [
  { header: 'NAME', get: (c: CredentialView) => c.name },
  { header: 'KIND', get: (c: CredentialView) => c.kind },
  { header: 'TYPE', get: (c: CredentialView) => c.keyType },
  { header: 'FINGERPRINT', get: (c: CredentialView) => c.fingerprint },
  { header: 'USED BY', get: (c: CredentialView) => (c.usedBy.length ? c.usedBy.join(', ') : null) },
];

export function credentialCommands(program: Command, g: () => GlobalOptions, api: () => ApiClient) {
  const cmd = program
    .command('credentials')
    .description('SSH keys the endpoint uses to run agentless machines (stored sealed; never shown again)')
    .addHelpText('after', examples('takt credentials add ops --ssh-key ~/.ssh/id_ed25519', 'takt credentials ls'));
  cmd
    .command('add <name>')
    .description('store a private key for agentless machines (takt machines create M --ssh USER@HOST --ssh-key NAME)')
    .addHelpText('after', examples('takt credentials add ops --ssh-key ~/.ssh/id_ed25519', 'pass show ops-key | takt credentials add ops --ssh-key ops.key --passphrase-stdin'))
    .requiredOption('--ssh-key <file>', 'the private key file (OpenSSH, PEM or PuTTY format)')
    .option('--passphrase-stdin', "read the key's passphrase from the first line of standard input (else, for an encrypted key, it is asked on the terminal)")
    .action(async (name: string, o: { sshKey: string; passphraseStdin?: boolean }) => {
      let privateKey: string;
      try {
        privateKey = await readFile(o.sshKey, 'utf8');
      } catch (err) {
        throw new TaktError('bad_request', `cannot read --ssh-key ${o.sshKey}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
      }
      const passphrase = o.passphraseStdin ? await firstLine(process.stdin) : (await isEncrypted(privateKey)) ? await askHidden(`passphrase for ${o.sshKey}: `) : undefined;
      const c = await api().post<CredentialView>('/credentials', { name, kind: 'ssh-key', privateKey, ...(passphrase ? { passphrase } : {}) });
      print(g().output, c, () => `${renderTable([c], columns)}\n${pc.dim('public key (add it to ~/.ssh/authorized_keys on the hosts):')}\n${shown(c.publicKey)}`);
    });
  cmd
    .command('list')
    .description('credentials: name, kind, key type, public-key fingerprint, machines that use it')
    .addHelpText('after', examples('takt credentials ls'))
    .action(async () => {
      const r = await api().get<{ items: CredentialView[] }>('/credentials');
      print(g().output, r.items, () => renderTable(r.items, columns));
    });
  cmd
    .command('get <name>')
    .description("one credential, with its public key (the line for the hosts' authorized_keys)")
    .addHelpText('after', examples('takt credentials get ops   # its public key, for authorized_keys'))
    .action(async (name: string) => {
      const c = await api().get<CredentialView>(`/credentials/${enc(name)}`);
      print(g().output, c, () => `${renderTable([c], columns)}\n${shown(c.publicKey)}`);
    });
  cmd
    .command('remove <name>')
    .description('remove a credential (refused while a machine uses it)')
    .addHelpText('after', examples('takt credentials rm ops'))
    .action(async (name: string) => {
      const c = await api().delete<CredentialView>(`/credentials/${enc(name)}`);
      print(g().output, c, () => shown(`removed ${c.name}`));
    });
}

/** Whether the key needs a passphrase (ssh2 is loaded only for this command). */
async function isEncrypted(text: string): Promise<boolean> {
  const { describePrivateKey, needsPassphrase } = await import('../brokers/ssh/keys.js');
  try {
    describePrivateKey(text, undefined, 'check');
    return false;
  } catch (err) {
    return /encrypted/.test((err as Error).message) || needsPassphrase(err as Error);
  }
}

export async function firstLine(stream: NodeJS.ReadStream): Promise<string> {
  let text = '';
  for await (const chunk of stream) {
    text += String(chunk);
    const nl = text.indexOf('\n');
    if (nl >= 0) return text.slice(0, nl).replace(/\r$/, '');
    if (text.length > 4096) break;
  }
  return text.replace(/\r?\n$/, '');
}

/** Asks on the terminal without echoing what is typed. */
export function askHidden(prompt: string): Promise<string> {
  const input = process.stdin;
  if (!input.isTTY) throw new TaktError('bad_request', 'the key is encrypted: give its passphrase on a terminal, or with --passphrase-stdin');
  return new Promise((resolve, reject) => {
    process.stderr.write(prompt);
    let text = '';
    input.setRawMode(true);
    input.resume();
    input.setEncoding('utf8');
    const done = (err?: Error) => {
      input.setRawMode(false);
      input.pause();
      input.off('data', onData);
      process.stderr.write('\n');
      if (err) reject(err);
      else resolve(text);
    };
    const onData = (s: string) => {
      for (const ch of s) {
        if (ch === '\r' || ch === '\n') return done();
        if (ch === '\u0003') return done(new TaktError('bad_request', 'cancelled'));
        if (ch === '\u007f' || ch === '\b') text = text.slice(0, -1);
        else text += ch;
      }
    };
    input.on('data', onData);
  });
}
