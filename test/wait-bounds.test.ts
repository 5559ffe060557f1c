/**
 * A static check over the test files: a test whose own `until(…)` bounds add up to more than its timeout
 * is cut off by vitest while it is still legitimately waiting (a loaded machine makes each wait longer,
 * not the sum smaller), and fails with "Test timed out" instead of the wait's own message that says what
 * was missing. Each such test must declare a timeout that covers its waits.
 *
 * What is counted: every call whose callee is `until` or ends in `.until`, with its second argument as
 * the bound (a numeric literal such as `90_000` or `2 * 60_000`; test/helpers/endpoint.ts's default,
 * 30 s, when absent); and every `expect.poll(…)` or Playwright `waitFor…(…)` with a literal `timeout`
 * option. A bound that is not a literal is not counted. Waits inside loops count once: the
 * check catches the common form, not every one.
 */
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';

const ROOT = join(import.meta.dirname, '..');
/** vitest.config.ts's testTimeout. */
const DEFAULT_TIMEOUT_MS = 60_000;
/** test/helpers/endpoint.ts's `until` default bound. */
const DEFAULT_UNTIL_MS = 30_000;

/** A numeric literal expression's value in ms (`90_000`, `2 * 60_000`), else undefined. */
function literalMs(node: ts.Node | undefined): number | undefined {
  if (!node) return undefined;
  if (ts.isNumericLiteral(node)) return Number(node.text);
  if (ts.isBinaryExpression(node) && node.operatorToken.kind === ts.SyntaxKind.AsteriskToken) {
    const a = literalMs(node.left);
    const b = literalMs(node.right);
    return a !== undefined && b !== undefined ? a * b : undefined;
  }
  if (ts.isParenthesizedExpression(node)) return literalMs(node.expression);
  return undefined;
}

/** A test's declared timeout: its third argument (a number or `{ timeout }`), else the default; undefined when not a literal. */
function timeoutOf(call: ts.CallExpression): number | undefined {
  const arg = call.arguments[2];
  if (!arg) return DEFAULT_TIMEOUT_MS;
  if (ts.isObjectLiteralExpression(arg)) {
    for (const p of arg.properties) if (ts.isPropertyAssignment(p) && p.name.getText() === 'timeout') return literalMs(p.initializer);
    return DEFAULT_TIMEOUT_MS;
  }
  return literalMs(arg);
}

/** `file:line` and the numbers of every test whose `until` bounds exceed its timeout. */
export function overBudget(file: string, text: string): string[] {
  const source = ts.createSourceFile(file, text, ts.ScriptTarget.Latest, true);
  const found: string[] = [];
  const visit = (node: ts.Node): void => {
    if (ts.isCallExpression(node) && /^(it|test)(\.only|\.skip|\.skipIf\(.*\)|\.runIf\(.*\))?$/s.test(node.expression.getText()) && node.arguments.length >= 2) {
      const timeout = timeoutOf(node);
      const bounds: number[] = [];
      const collect = (n: ts.Node): void => {
        if (ts.isCallExpression(n) && /(^|\.)until$/.test(n.expression.getText())) {
          const ms = n.arguments.length < 2 ? DEFAULT_UNTIL_MS : literalMs(n.arguments[1]);
          if (ms !== undefined) bounds.push(ms);
        } else if (ts.isCallExpression(n) && /(^|\.)(poll|waitFor\w*)$/.test(n.expression.getText())) {
          // expect.poll(f, { timeout }) and Playwright's waitFor…({ timeout }): the bound is the option.
          for (const a of n.arguments) {
            if (!ts.isObjectLiteralExpression(a)) continue;
            for (const p of a.properties) {
              if (ts.isPropertyAssignment(p) && p.name.getText() === 'timeout') {
                const ms = literalMs(p.initializer);
                if (ms !== undefined) bounds.push(ms);
              }
            }
          }
        }
        ts.forEachChild(n, collect);
      };
      collect(node.arguments[1]!);
      const sum = bounds.reduce((a, b) => a + b, 0);
      if (timeout !== undefined && sum > timeout) {
        const line = source.getLineAndCharacterOfPosition(node.getStart()).line + 1;
        found.push(`${file}:${line}: waits up to ${sum / 1000} s (${bounds.map((b) => b / 1000).join(' + ')}) but times out at ${timeout / 1000} s`);
      }
    }
    ts.forEachChild(node, visit);
  };
  visit(source);
  return found;
}

describe('test wait bounds', () => {
  it.each([
    ['no waits', `it('a', async () => { await x(); });`, 0],
    ['within the default', `it('a', async () => { await until(f, 30_000, 'x'); await until(f); });`, 0],
    ['over the default', `it('a', async () => { await until(f, 60_000, 'x'); await until(f); });`, 1],
    ['covered by a number', `it('a', async () => { await until(f, 60_000, 'x'); await until(f); }, 120_000);`, 0],
    ['covered by an object', `it('a', async () => { await lab.until(f, 2 * 60_000, 'x'); }, { timeout: 3 * 60_000 });`, 0],
    ['a method call counts', `it('a', async () => { await lab.until(f, 90_000, 'x'); });`, 1],
    ['a skipIf test', `it.skipIf(!ok)('a', async () => { await until(f, 90_000); });`, 1],
    ['a bound not a literal is not counted', `it('a', async () => { await until(f, LONG); });`, 0],
    ['expect.poll and waitFor count', `it('a', async () => { await expect.poll(f, { timeout: 30_000 }).toBe(3); await page.locator('x').waitFor({ state: 'visible', timeout: 40_000 }); });`, 1],
    ['expect.poll within the timeout', `it('a', async () => { await expect.poll(f, { timeout: 30_000 }).toBe(3); }, 60_000);`, 0],
  ])('%s', (_name, text, n) => {
    expect(overBudget('t.test.ts', text)).toHaveLength(n);
  });

  it('every test file: no test waits longer than its timeout', () => {
    const dir = join(ROOT, 'test');
    const problems = readdirSync(dir)
      .filter((f) => f.endsWith('.test.ts'))
      .flatMap((f) => overBudget(`test/${f}`, readFileSync(join(dir, f), 'utf8')));
    expect(problems, 'give each test a timeout that covers its own waits (the third argument of it())').toEqual([]);
  });
});
