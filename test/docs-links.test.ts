/**
 * Every relative link in the project's Markdown resolves inside the repository — to a file that exists
 * and, for `file.md#anchor`, to a heading it has — so a clone's docs have no dead ends.
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ROOT } from './helpers/endpoint.js';

const SKIP = new Set(['node_modules', 'dist', '.git', 'data']);

function markdownFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    if (SKIP.has(e.name) || e.name.startsWith('.')) return [];
    const p = join(dir, e.name);
    return e.isDirectory() ? markdownFiles(p) : e.name.endsWith('.md') ? [p] : [];
  });
}

/** Markdown without its fenced code blocks and inline code, where `[x](y)` is not a link. */
const prose = (text: string) => text.replace(/^```[\s\S]*?^```/gm, '').replace(/`[^`\n]*`/g, '');

/** GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens. */
const slug = (heading: string) =>
  heading
    .trim()
    .toLowerCase()
    .replace(/[^\p{L}\p{N}\s_-]/gu, '')
    .replace(/\s/g, '-');

function anchors(file: string): Set<string> {
  const text = readFileSync(file, 'utf8').replace(/^```[\s\S]*?^```/gm, '');
  return new Set([...text.matchAll(/^#{1,6}\s+(.+?)\s*#*$/gm)].map((m) => slug(m[1]!.replace(/`/g, ''))));
}

/** Every relative link target in `file` with the line it is on. */
function links(file: string): Array<{ target: string; line: number }> {
  const out: Array<{ target: string; line: number }> = [];
  prose(readFileSync(file, 'utf8'))
    .split('\n')
    .forEach((l, i) => {
      for (const m of l.matchAll(/\]\(([^)\s]+)(?:\s+"[^"]*")?\)/g)) {
        const target = m[1]!;
        if (!/^([a-z]+:|#)/i.test(target)) out.push({ target, line: i + 1 });
      }
    });
  return out;
}

describe('links in the docs', () => {
  const files = markdownFiles(ROOT);

  it('finds the docs (README, docs/*.md)', () => {
    const names = files.map((f) => relative(ROOT, f));
    expect(names).toContain('README.md');
    expect(names).toContain(join('docs', 'architecture.md'));
  });

  it.each([
    ['Life of a Job', 'life-of-a-job'],
    ['`takt plan`: what runs', 'takt-plan-what-runs'],
    ['Agentless (over SSH)', 'agentless-over-ssh'],
  ])('slug(%j) is %j', (heading, want) => expect(slug(heading)).toBe(want));

  it('every relative link resolves to a file inside the repository, and its #anchor to a heading', () => {
    const broken: string[] = [];
    for (const file of files) {
      for (const { target, line } of links(file)) {
        const [path, anchor] = target.split('#') as [string, string | undefined];
        const abs = resolve(dirname(file), decodeURIComponent(path));
        const where = `${relative(ROOT, file)}:${line}: ${target}`;
        if (relative(ROOT, abs).startsWith('..')) broken.push(`${where} (outside the repository)`);
        else if (!existsSync(abs)) broken.push(`${where} (no such file)`);
        else if (anchor && statSync(abs).isFile() && abs.endsWith('.md') && !anchors(abs).has(anchor)) broken.push(`${where} (no such heading)`);
      }
    }
    expect(broken).toEqual([]);
  });
});
