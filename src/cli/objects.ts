/** The `objects` commands. */
import { readFile } from 'node:fs/promises';
import { type Command } from 'commander';
import type { ApiClient } from '../client/http.js';
import { CONTENT_KINDS, KIND_NOUN } from '../model/content-names.js';
import { TaktError } from '../model/errors.js';
import { type Globals } from './client.js';
import { print, renderTable, shown } from './output.js';
import { examples } from './help.js';

const enc = encodeURIComponent;

// ---- content objects (params, profiles, tasks, stages, pipelines, blueprints) --------------------------

/** Registers `takt <kind> list|get|apply|delete`; returns the kind's command, for kind-specific subcommands. */
export function objectCommands(program: Command, g: Globals, api: () => ApiClient, kind: (typeof CONTENT_KINDS)[number]): Command {
  const noun = KIND_NOUN[kind];
  const cmd = program
    .command(kind)
    .description(`${noun} definitions (from packs, or local ones made here)`)
    .addHelpText('after', examples(`takt ${kind} ls`, `takt ${kind} get NAME -o yaml`));
  cmd
    .command('list')
    .description(`${noun} definitions: name, layer (pack or local), description`)
    .addHelpText('after', examples(`takt ${kind} ls`, `takt ${kind} list --layer local`))
    .option('--layer <layer>', "pack name or 'local'")
    .action(async (o: { layer?: string }) => {
      const r = await api().get<{ items: Array<{ name: string; layer: string; description?: string }> }>(`/${kind}`, o);
      print(g().output, r.items, () =>
        renderTable(r.items, [
          { header: 'NAME', get: (i) => i.name },
          { header: 'LAYER', get: (i) => i.layer },
          { header: 'DESCRIPTION', get: (i) => i.description, flex: true },
        ]),
      );
    });
  cmd.command('get <name>')
    .description(`one ${noun} definition, whole`)
    .addHelpText('after', examples(`takt ${kind} get NAME -o yaml`))
    .action(async (name: string) => print(g().output, await api().get(`/${kind}/${enc(name)}`), undefined));
  cmd
    .command('apply')
    .description(`create or replace a local ${noun} from a YAML or JSON file`)
    .addHelpText('after', examples(`takt ${kind} apply -f my-${noun}.yaml`))
    .requiredOption('-f, --file <file>')
    .action(async (o: { file: string }) => {
      const { parseYamlValue } = await import('../content/yaml.js');
      const def = parseYamlValue(await readFile(o.file, 'utf8'), o.file) as { name?: string } | null;
      if (!def || typeof def !== 'object' || typeof def.name !== 'string') throw new TaktError('invalid', `${o.file}: expected a ${noun} mapping with a name`);
      const client = api();
      const exists = await client.get(`/${kind}/${enc(def.name)}`).then(
        () => true,
        (err: unknown) => (err instanceof TaktError && err.code === 'not_found' ? false : Promise.reject(err)),
      );
      const r = exists ? await client.put(`/${kind}/${enc(def.name)}`, def) : await client.post(`/${kind}`, def);
      print(g().output, r, () => shown(`${exists ? 'updated' : 'created'} ${noun} ${def.name}`));
    });
  cmd.command('delete <name>')
    .description(`delete a local ${noun} (pack content is removed with its pack)`)
    .addHelpText('after', examples(`takt ${kind} rm NAME`))
    .action(async (name: string) => {
      const r = await api().delete(`/${kind}/${enc(name)}`);
      print(g().output, r, () => shown(`deleted ${noun} ${name}`));
    });
  return cmd;
}
