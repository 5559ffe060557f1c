/**
 * Help that teaches by example, and the CLI's naming conventions (aliases), in one place so every
 * command — including ones added later — follows them. test/cli-format.test.ts walks the whole command
 * tree and fails for a command without a description or examples.
 */
import type { Command } from 'commander';

/**
 * The "Examples:" section of a command's help, for `.addHelpText('after', examples(…))`: one `$ takt …`
 * line per example; an example may end in `  # what it does`.
 */
export function examples(...lines: string[]): string {
  if (lines.length === 0) throw new Error('examples(): give at least one example');
  return `\nExamples:\n${lines.map((l) => `  $ ${l}`).join('\n')}`;
}

/** The text `addHelpText('after', …)` appended to `cmd`'s help ('' when none): what the test checks. */
export function helpAfter(cmd: Command): string {
  let text = '';
  const context = { error: false, command: cmd, write: (s: string) => (text += s) };
  // Command is an EventEmitter at run time; its typings do not say so.
  for (const listener of (cmd as unknown as NodeJS.EventEmitter).listeners('afterHelp')) (listener as (c: typeof context) => void)(context);
  return text;
}

/** Every command below `root` (not `root` itself), depth first, with its path of names. */
export function walkCommands(root: Command, path: string[] = []): Array<{ cmd: Command; path: string[] }> {
  return root.commands.flatMap((c) => [{ cmd: c, path: [...path, c.name()] }, ...walkCommands(c, [...path, c.name()])]);
}

/**
 * The resource names a top-level command also answers to, like kubectl's: the singular of every plural
 * resource (`takt machine get web-1`), plus `wo` for the long `workorders`.
 */
export const RESOURCE_ALIASES: Record<string, string[]> = {
  machines: ['machine'],
  jobs: ['job'],
  workorders: ['workorder', 'wo'],
  rollouts: ['rollout'],
  approvals: ['approval'],
  credentials: ['credential'],
  images: ['image'],
  'join-tokens': ['join-token'],
  params: ['param'],
  profiles: ['profile'],
  tasks: ['task'],
  stages: ['stage'],
  pipelines: ['pipeline'],
  blueprints: ['blueprint'],
  bootenvs: ['bootenv'],
  classifiers: ['classifier'],
  events: ['event'],
  users: ['user'],
  groups: ['group'],
  roles: ['role'],
  tokens: ['token'],
};

/** Verb aliases, wherever the verb is: `ls` for list, `rm` for delete and remove. */
export const VERB_ALIASES: Record<string, string> = { list: 'ls', delete: 'rm', remove: 'rm' };

/**
 * Gives every command under `program` the aliases above (skipping any a sibling already has as its
 * name or alias, so an alias never shadows a command). Run once, after every command is registered.
 */
export function addAliases(program: Command): void {
  const add = (cmd: Command, siblings: readonly Command[], wanted: string[]) => {
    const taken = new Set(siblings.flatMap((s) => [s.name(), ...s.aliases()]));
    for (const a of wanted) if (!taken.has(a)) cmd.alias(a);
  };
  for (const c of program.commands) add(c, program.commands, RESOURCE_ALIASES[c.name()] ?? []);
  for (const cmd of [program, ...walkCommands(program).map((w) => w.cmd)]) {
    for (const c of cmd.commands) {
      const verb = VERB_ALIASES[c.name()];
      if (verb) add(c, cmd.commands, [verb]);
    }
  }
}
