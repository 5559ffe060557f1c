/**
 * Issue 12: the pure checks a restore makes — which sealed values another endpoint's key sealed, and how a
 * refused import's problems read on the CLI.
 */
import { describe, expect, it } from 'vitest';
import { problemLines } from '../src/cli/program.js';
import { newHostReason } from '../src/engine/portable.js';
import { foreignSealed, Sealer } from '../src/model/secure.js';

const ours = new Sealer(Buffer.alloc(32, 1));
const theirs = new Sealer(Buffer.alloc(32, 2));
const mine = ours.seal('k-mine');
const foreign = theirs.seal('k-theirs');

describe('foreignSealed: the sealed values this key cannot open, as JSON pointers', () => {
  const cases: Array<[string, unknown, string, string[]]> = [
    ['nothing sealed', { a: 1, b: 'x', c: [true, null] }, '', []],
    ['sealed with this key', { api_key: mine }, '/params', []],
    ['sealed with another key', { api_key: foreign, msg: 'hi' }, '/params', ['/params/api_key']],
    ['several, nested in objects and lists', { a: foreign, b: { c: [mine, foreign] } }, '', ['/a', '/b/c/1']],
    ['a bare sealed value', foreign, '/outputs/x', ['/outputs/x']],
    ['keys escaped as JSON pointer tokens', { 'a/b': foreign, 'c~d': foreign }, '', ['/a~1b', '/c~0d']],
    ['a mapping with more than $secure is not a sealed value', { v: { $secure: 'v1:AAAA', other: 1 } }, '', []],
    ['a garbled ciphertext cannot be opened either', { v: { $secure: 'v1:AAAA' } }, '', ['/v']],
  ];
  it.each(cases)('%s', (_name, value, at, want) => {
    expect(foreignSealed(value, ours, at)).toEqual(want);
  });

  it('opens() answers true for values it sealed or that are not sealed', () => {
    expect([ours.opens(mine), ours.opens(foreign), ours.opens('plain'), theirs.opens(foreign)]).toEqual([true, false, true, true]);
  });
});

describe('problemLines: a refused import or rewind, one problem a line', () => {
  const cases: Array<[string, unknown, string[]]> = [
    ['no details', undefined, []],
    ['no problems list', { other: 1 }, []],
    ['one problem: the message says it already', { problems: [{ file: 'machines/a.yaml', message: 'bad' }] }, []],
    [
      'positions, fields, files alone',
      {
        problems: [
          { file: 'machines/a.yaml', line: 4, col: 1, message: 'invalid YAML' },
          { file: 'machines/b.yaml', path: '/params/x', message: 'not declared' },
          { file: 'local/tasks/t.yaml', message: 'not part of an export' },
        ],
      },
      ['  machines/a.yaml:4:1: invalid YAML', '  machines/b.yaml /params/x: not declared', '  local/tasks/t.yaml: not part of an export'],
    ],
    ['entries that are not problems are left out', { problems: [{ file: 'a', message: 'x' }, 'junk', { file: 1 }, { file: 'b', message: 'y' }] }, ['  a: x', '  b: y']],
  ];
  it.each(cases)('%s', (_name, details, want) => {
    expect(problemLines(details)).toEqual(want);
  });
});

describe('newHostReason', () => {
  it('names the command that recreates the sandbox', () => {
    expect(newHostReason('web-1')).toMatch(/^restored onto a new host: .*`takt machines restart web-1`/);
  });
});
