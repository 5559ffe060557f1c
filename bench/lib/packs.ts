/**
 * Content packs generated for a bench: N numbered tasks in one stage, one pipeline. Generated rather
 * than checked in, because their size is a bench parameter (200 tasks for dispatch, 10 for the fleet).
 */
import type { ApiClient } from '../../src/client/http.js';
import type { PackFiles } from '../../src/content/files.js';

export interface SeqPackOptions {
  /** Pack and pipeline name. */
  name: string;
  tasks: number;
  description: string;
  /** The script of task `i` (1-based). */
  script: (i: number) => string;
}

export const taskName = (pack: string, i: number) => `${pack}-${String(i).padStart(3, '0')}`;

export function seqPack(o: SeqPackOptions): PackFiles {
  const files: PackFiles = {
    'pack.yaml': `name: ${o.name}\nversion: 1.0.0\ndescription: ${o.description}\n`,
    [`pipelines/${o.name}.yaml`]: `name: ${o.name}\ndescription: ${o.description}\nstages: [main]\n`,
  };
  const names: string[] = [];
  for (let i = 1; i <= o.tasks; i++) {
    const name = taskName(o.name, i);
    names.push(name);
    const body = o.script(i).trimEnd().split('\n').map((l) => `  ${l}`).join('\n');
    files[`tasks/${name}.yaml`] = `name: ${name}\ndescription: bench task ${i} of ${o.tasks}\ntimeout: 1m\nscript: |\n${body}\n`;
  }
  files['stages/main.yaml'] = `name: main\ndescription: every bench task in order\ntasks: [${names.join(', ')}]\n`;
  return files;
}

export async function installPack(api: ApiClient, files: PackFiles): Promise<void> {
  await api.post('/packs', { files }, { timeoutMs: 120_000 });
}
