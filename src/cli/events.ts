/** `takt events watch`: the event stream. */
import { type Command } from 'commander';
import { pc } from './color.js';
import { followEvents } from '../client/events.js';
import type { ApiClient } from '../client/http.js';
import { TaktError } from '../model/errors.js';
import type { Machine } from '../model/machine.js';
import { type Globals } from './client.js';
import { shown, shownErr } from './output.js';
import { examples } from './help.js';

export function eventCommands(program: Command, g: Globals, api: () => ApiClient) {

  program
    .command('events')
    .description('the event stream')
    .addHelpText('after', examples('takt events watch --topics "machines.*.*"'))
    .command('watch')
    .description('print events as they happen (topics like machines.*.*, jobs.update.<id>; default all)')
    .addHelpText('after', examples('takt events watch', 'takt events watch --topics "machines.*.*,jobs.update.*" -o json', 'takt events watch --topics machines.update.demo-1   # one machine, by name', 'takt events watch --since 1200'))
    .option('--topics <list>', 'comma-separated topic filters: TYPE[.ACTION[.ID]], each part a name or *; a machine may be named by its name (machines.update.web-1)', '')
    .option('--since <id>', 'replay events after this id first')
    .action(async (o: { topics: string; since?: string }) => {
      // Refused here, before connecting: a filter that matches nothing would wait silently forever.
      const { parseTopics } = await import('../api/topics.js');
      const topics = await machineTopicsById(api(), parseTopics(o.topics));
      // Runs until interrupted; resumes after the last event printed when the stream ends or drops.
      await followEvents(
        api(),
        (e) => {
          if (g().output === 'json') process.stdout.write(JSON.stringify(e) + '\n');
          else process.stdout.write(`${pc.dim(shown(e.at.slice(11, 23)))} ${pc.bold(shown(e.topic))} ${shown(summarize(e.data))}\n`);
        },
        {
          topics: topics.join(','),
          since: o.since,
          onBreak: (why, waitMs) => process.stderr.write(pc.dim(`${why}; ${waitMs ? `reconnecting in ${(waitMs / 1000).toFixed(1)} s` : 'resuming'}\n`)),
        },
      );
    });
}

/**
 * Machine topics carry the machine's id (`machines.update.m-1a2b…`), but people type its name: a machine
 * filter's third part that is not an id is looked up and replaced by the id, said on stderr, so the watch
 * does not wait silently on a topic no event has. Throws TaktError `not_found` for a name no machine has.
 */
async function machineTopicsById(client: ApiClient, topics: string[]): Promise<string[]> {
  return Promise.all(
    topics.map(async (t) => {
      const [type, action, ref] = t.split('.');
      if (type !== 'machines' || ref === undefined || ref === '*' || /^m-[0-9a-f]+$/.test(ref)) return t;
      const m = await client.get<Machine>(`/machines/${encodeURIComponent(ref)}`).catch((err: unknown) => {
        if (err instanceof TaktError && err.code === 'not_found') throw new TaktError('not_found', `--topics ${t}: no machine '${ref}' (machine topics end in a machine's name or id)`);
        throw err;
      });
      const byId = `${type}.${action}.${m.id}`;
      process.stderr.write(pc.dim(shownErr(`${t}: watching ${byId} (machine ${m.name})`)) + '\n');
      return byId;
    }),
  );
}

function summarize(data: unknown): string {
  if (!data || typeof data !== 'object') return '';
  const d = data as Record<string, unknown>;
  const agent = d.agent && typeof d.agent === 'object' ? ` agent=${(d.agent as { connected?: boolean }).connected ? 'connected' : 'disconnected'}` : '';
  return ['name', 'task', 'state', 'reason'].filter((k) => d[k] !== undefined && d[k] !== null).map((k) => `${k}=${String(d[k])}`).join(' ') + agent;
}
