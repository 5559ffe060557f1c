/**
 * Endpoint logging: pino JSON lines for machines (TAKT_LOG_FORMAT=json), short readable lines for people.
 * Secrets never reach here: callers pass names and ids, never scripts or param values.
 */
import { pino } from 'pino';
import { pc } from './color.js';
import { forStream } from './output.js';

export type LogFn = (level: 'info' | 'warn' | 'error', msg: string, fields?: Record<string, unknown>) => void;

export function createLog(format: 'text' | 'json'): LogFn {
  if (format === 'json') {
    const logger = pino({ base: undefined, timestamp: pino.stdTimeFunctions.isoTime });
    return (level, msg, fields) => logger[level](fields ?? {}, msg);
  }
  const color = { info: pc.cyan, warn: pc.yellow, error: pc.red };
  return (level, msg, fields) => {
    const time = new Date().toISOString().slice(11, 19);
    const stream = level === 'error' ? process.stderr : process.stdout;
    // Fields carry names and errors that machines can influence: escaped on a terminal.
    const shown = (text: string) => forStream(stream, text);
    const extra = fields ? Object.entries(fields).map(([k, v]) => `${pc.dim(shown(k) + '=')}${shown(typeof v === 'string' ? v : JSON.stringify(v))}`).join(' ') : '';
    const line = `${pc.dim(time)} ${color[level](level.padEnd(5))} ${shown(msg)}${extra ? ' ' + extra : ''}`;
    stream.write(line + '\n');
  };
}
