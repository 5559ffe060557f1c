/**
 * The checks a machine's desired fields pass before they are written (src/engine/machine-checks.ts),
 * without an endpoint: param names, schemas, exactness, bounds, sealing of secure params, removal by null,
 * sealed values from history passing as they are, and references into content.
 */
import { describe, expect, it } from 'vitest';
import { checkParams, MAX_PARAMS, MAX_PARAMS_BYTES, requireBootenv, requirePipeline, requireProfiles } from '../src/engine/machine-checks.js';
import { emptyContentSet, type ContentSet, type ParamDef } from '../src/model/content.js';
import { TaktError } from '../src/model/errors.js';
import { isSealed, Sealer } from '../src/model/secure.js';

const sealer = new Sealer(Sealer.generateKey());
const other = new Sealer(Sealer.generateKey());

function content(): ContentSet {
  const set = emptyContentSet();
  const param = (def: ParamDef) => set.objects.params.set(def.name, { def, layer: 'p' });
  param({ name: 'count', schema: { type: 'integer', minimum: 1 } } as ParamDef);
  param({ name: 'password', secure: true, schema: { type: 'string' } } as ParamDef);
  param({ name: 'size', schema: { type: 'number' } } as ParamDef);
  set.objects.profiles.set('web', { def: { name: 'web' }, layer: 'p' } as never);
  set.objects.pipelines.set('deploy', { def: { name: 'deploy', stages: [] }, layer: 'p' } as never);
  set.objects.bootenvs.set('discovery', { def: { name: 'discovery' }, layer: 'p' } as never);
  return set;
}

/** The TaktError `f` throws, as code + path + a piece of its message; null when it does not throw. */
function refusal(f: () => unknown): { code: string; path: unknown; message: string } | null {
  try {
    f();
    return null;
  } catch (e) {
    if (!(e instanceof TaktError)) throw e;
    return { code: e.code, path: e.path, message: e.message };
  }
}

describe('checkParams refuses', () => {
  it.each([
    ['an upper-case name', { Count: 2 }, 'invalid', '/params/Count', /not a valid param name/],
    ['a name with a dash', { 'my-param': 1 }, 'invalid', '/params/my-param', /not a valid param name/],
    ["the reserved name 'machine'", { machine: 'x' }, 'invalid', '/params/machine', /not 'machine'/],
    ['a value against its schema', { count: 0 }, 'invalid', '/params/count', /param 'count'/],
    ['a wrong type', { count: 'two' }, 'invalid', '/params/count', /param 'count'/],
    ['an integer past 2^53 (inexact)', { size: 2 ** 53 + 2 }, 'invalid', '/params/size', /param 'size'/],
    ['more than MAX_PARAMS params', Object.fromEntries(Array.from({ length: MAX_PARAMS + 1 }, (_, i) => [`p${i}`, 1])), 'too_large', '/params', new RegExp(`at most ${MAX_PARAMS}`)],
    ['params past MAX_PARAMS_BYTES', { big: 'x'.repeat(MAX_PARAMS_BYTES) }, 'too_large', '/params', new RegExp(`at most ${MAX_PARAMS_BYTES}`)],
  ])('%s', (_what, patch, code, path, message) => {
    const r = refusal(() => checkParams(sealer, content(), {}, patch as Record<string, unknown>));
    expect(r).toMatchObject({ code, path });
    expect(r!.message).toMatch(message as RegExp);
  });
});

describe('checkParams accepts', () => {
  it('a valid value, an undeclared one (declared.ts decides those), and removes by null', () => {
    const out = checkParams(sealer, content(), { count: 1, gone: 'x' }, { count: 3, free: { a: 1 }, gone: null });
    expect(out).toEqual({ count: 3, free: { a: 1 } });
  });

  it('seals a secure param, and passes a sealed value from history as it is (even of another key)', () => {
    const out = checkParams(sealer, content(), {}, { password: 'hunter2' });
    expect(isSealed(out.password)).toBe(true);
    expect(sealer.open(out.password)).toBe('hunter2');
    const foreign = other.seal('from an export');
    expect(checkParams(sealer, content(), {}, { password: foreign }).password).toBe(foreign);
  });

  it('leaves `current` unchanged', () => {
    const current = { count: 1 };
    checkParams(sealer, content(), current, { count: 2 });
    expect(current).toEqual({ count: 1 });
  });
});

describe('references into content', () => {
  it.each([
    ['a pipeline', () => requirePipeline(content(), 'nosuch'), 'not_found', '/pipeline'],
    ['the second profile', () => requireProfiles(content(), ['web', 'nosuch']), 'not_found', '/profiles/1'],
    ['a bootenv', () => requireBootenv(content(), { bootenv: 'nosuch', macs: [], uuid: null } as never), 'not_found', '/boot/bootenv'],
  ])('refuses an unknown %s, at its path', (_what, f, code, path) => {
    expect(refusal(f)).toMatchObject({ code, path });
  });

  it.each([
    ['a known pipeline', () => requirePipeline(content(), 'deploy')],
    ['known profiles', () => requireProfiles(content(), ['web'])],
    ['a known bootenv', () => requireBootenv(content(), { bootenv: 'discovery', macs: [], uuid: null } as never)],
    ["the built-in bootenv 'local'", () => requireBootenv(content(), { bootenv: 'local', macs: [], uuid: null } as never)],
  ])('accepts %s', (_what, f) => {
    expect(refusal(f)).toBeNull();
  });

  it('names the bootenvs there are when one is unknown', () => {
    expect(refusal(() => requireBootenv(content(), { bootenv: 'nosuch', macs: [], uuid: null } as never))!.message).toMatch(/there are: discovery, local/);
  });
});
