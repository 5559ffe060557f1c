/**
 * The agent's own log: events about claims, jobs and delivery. It never carries a script's text or its
 * params (both may hold secrets) — only ids, task names, exit codes and error messages.
 */
export type LogLevel = 'info' | 'warn' | 'error';
export type AgentLog = (level: LogLevel, msg: string, fields?: Record<string, unknown>) => void;

/** One JSON line per event on stderr, so a supervisor (systemd, the local broker) can collect it as is. */
export const jsonLineLog: AgentLog = (level, msg, fields) => {
  process.stderr.write(`${JSON.stringify({ time: new Date().toISOString(), level, msg, ...fields })}\n`);
};

export const errorMessage = (err: unknown): string => (err instanceof Error ? err.message : String(err));
