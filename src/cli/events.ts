/** `takt events watch`: the event stream. */
import { type Command } from 'commander';
import pc from 'picocolors';
import { followEvents } from '../client/events.js';
import type { ApiClient } from '../client/http.js';
import { type Globals } from './client.js';
import { shown } from './output.js';
import { examples } from './help.js';

export function eventCommands(program: Command, g: Globals, api: () => ApiClient) {

  program
    .command('events')
    .description('the event stream')
    .addHelpText('after', examples('takt events watch --topics "machines.*.*"'))
    .command('watch')
    .description('print events as they happen (topics like machines.*.*, jobs.update.<id>; default all)')
    .addHelpText('after', examples('takt events watch', 'takt events watch --topics "machines.*.*,jobs.update.*" -o json', 'takt events watch --since 1200'))
    .option('--topics <list>', 'comma-separated topic filters: TYPE[.ACTION[.ID]], each part a name or *', '')
    .option('--since <id>', 'replay events after this id first')
    .action(async (o: { topics: string; since?: string }) => {
      // Refused here, before connecting: a filter that matches nothing would wait silently forever.
      const { parseTopics } = await import('../api/topics.js');
      parseTopics(o.topics);
      // Runs until interrupted; resumes after the last event printed when the stream ends or drops.
      await followEvents(
        api(),
        (e) => {
          if (g().output === 'json') process.stdout.write(JSON.stringify(e) + '\n');
          else process.stdout.write(`${pc.dim(shown(e.at.slice(11, 23)))} ${pc.bold(shown(e.topic))} ${shown(summarize(e.data))}\n`);
        },
        {
          topics: o.topics,
          since: o.since,
          onBreak: (why, waitMs) => process.stderr.write(pc.dim(`${why}; ${waitMs ? `reconnecting in ${(waitMs / 1000).toFixed(1)} s` : 'resuming'}\n`)),
        },
      );
    });
}

function summarize(data: unknown): string {
  if (!data || typeof data !== 'object') return '';
  const d = data as Record<string, unknown>;
  const agent = d.agent && typeof d.agent === 'object' ? ` agent=${(d.agent as { connected?: boolean }).connected ? 'connected' : 'disconnected'}` : '';
  return ['name', 'task', 'state', 'reason'].filter((k) => d[k] !== undefined && d[k] !== null).map((k) => `${k}=${String(d[k])}`).join(' ') + agent;
}
