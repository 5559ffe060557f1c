/** How the CLI shows a machine's agent liveness and derived status (`machines list` / `machines get`). */
import { pc } from './color.js';
import type { Machine, MachineStatus } from '../model/machine.js';
import { colorState, shown, toYaml } from './output.js';

/** A machine as the API answers it: with the derived `status` (absent from an older endpoint). */
export type MachineView = Machine & { status?: MachineStatus };

/** A coarse age for a column: `45s`, `3m`, `5h`, `2d`. */
export function ago(ms: number): string {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m`;
  if (s < 48 * 3600) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86400)}d`;
}

/** A time as an operator reads it: `10:42:07` today (local time), else `2026-11-29 10:42`. */
export function clock(isoTime: string, now = new Date()): string {
  const t = new Date(isoTime);
  const pad = (n: number) => String(n).padStart(2, '0');
  const hm = `${pad(t.getHours())}:${pad(t.getMinutes())}`;
  if (t.toDateString() === now.toDateString()) return `${hm}:${pad(t.getSeconds())}`;
  return `${t.getFullYear()}-${pad(t.getMonth() + 1)}-${pad(t.getDate())} ${hm}`;
}

/** Reasons the SSH broker writes when it cannot reach or use a host (src/brokers/ssh/driver.ts). */
const SSH_TROUBLE = /^(cannot reach |cannot log in to |cannot use )/;

/**
 * An agentless machine whose connection takt closed itself for want of work: nothing is wrong with it
 * (no job on it, no trouble noted in its reason), it is only not connected until its next job.
 */
export function sshIdle(m: MachineView): boolean {
  const a = m.agent;
  return !!a && a.via === 'ssh' && !a.connected && !!a.lastSeenAt && !m.currentJob && !(m.reason && SSH_TROUBLE.test(m.reason));
}

/** The AGENT column: `connected`, `connected (ssh)`, `idle (ssh)`, `gone 3m` (since last heard), or `never`. */
export function agentCell(m: MachineView, nowMs = Date.now()): string {
  const a = m.agent;
  if (!a) return '-';
  const ssh = a.via === 'ssh' ? ' (ssh)' : '';
  if (a.connected) return `connected${ssh}`;
  if (!a.lastSeenAt) return 'never';
  if (sshIdle(m)) return 'idle (ssh)';
  return `gone ${ago(nowMs - Date.parse(a.lastSeenAt))}${ssh}`;
}

/** The STATE column: the derived status (`waiting-for-agent` in yellow), else the state. */
export const statusOf = (m: MachineView): string => m.status ?? m.state;
export const colorStatus = (text: string): string => (text === 'waiting-for-agent' ? pc.yellow(text) : colorState(text));

/** `machines get` for people: a headline, the agent's liveness in words, then the whole machine as YAML. */
export function machineText(m: MachineView, now = new Date()): string {
  const a = m.agent;
  const head =
    m.status === 'waiting-for-agent'
      ? `${pc.bold(shown(m.name))} ${pc.yellow(`waiting for an agent since ${clock(a.since, now)}`)}`
      : `${pc.bold(shown(m.name))} ${colorState(m.state)}`;
  const lines = [`${head}${m.pipeline ? ` · pipeline ${shown(m.pipeline)}` : ''}${m.currentJob ? ` · job ${shown(m.currentJob)}` : ''}`];
  if (a) {
    const via = a.via === 'ssh' ? ' over SSH' : '';
    const seen = a.lastSeenAt ? `last seen ${clock(a.lastSeenAt, now)} (${ago(now.getTime() - Date.parse(a.lastSeenAt))} ago)` : null;
    const parts = [
      a.connected
        ? pc.green(`connected${via} since ${clock(a.since, now)}`)
        : sshIdle(m)
          ? `idle over SSH: takt closed the connection for want of work; it connects again for the next job`
          : a.lastSeenAt
            ? pc.red(`disconnected since ${clock(a.since, now)}`)
            : pc.dim('never connected'),
      seen,
      a.address ? `from ${shown(a.address)}` : null,
      a.version ? `version ${shown(a.version)}` : null,
    ].filter((p): p is string => p !== null);
    lines.push(`agent: ${parts.join(' · ')}`);
  }
  return `${lines.join('\n')}\n${shown(toYaml(m))}`.replace(/\n$/, '');
}
