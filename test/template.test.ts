import { describe, expect, it } from 'vitest';
import { renderTemplate, TemplateError, templateVariables, templateVariableUses } from '../src/render/template.js';

function error(source: string, vars: Record<string, unknown> = {}): TemplateError {
  try {
    renderTemplate(source, vars);
  } catch (e) {
    expect(e).toBeInstanceOf(TemplateError);
    return e as TemplateError;
  }
  throw new Error('expected a TemplateError');
}

describe('renderTemplate', () => {
  it('renders params and the machine object', () => {
    const out = renderTemplate('echo {{ greeting }} > /etc/motd # {{ machine.name }} {{ machine.environment }}', {
      greeting: 'hi',
      machine: { id: 'm1', name: 'web-1', environment: 'local' },
    });
    expect(out).toBe('echo hi > /etc/motd # web-1 local');
  });

  it('supports logic-light Liquid: if, for, assign, filters', () => {
    const src = '{% assign n = 2 %}{% for i in (1..n) %}{{ i }}{% endfor %}{% if on %}on{% else %}off{% endif %}{{ list | join: "," | upcase }}';
    expect(renderTemplate(src, { on: false, list: ['a', 'b'] })).toBe('12offA,B');
  });

  it('renders a null (unset optional) param as empty and lets default replace it', () => {
    expect(renderTemplate('[{{ x }}][{{ x | default: "none" }}]{% if x %}set{% endif %}', { x: null })).toBe('[][none]');
  });

  it('quotes for the shell with shellquote', () => {
    expect(renderTemplate('echo {{ g | shellquote }}', { g: "it's $(rm -rf /)" })).toBe(`echo 'it'\\''s $(rm -rf /)'`);
  });

  it('throws on a missing variable, with its position', () => {
    const e = error('echo ok\necho {{ hostname }}', { other: 1 });
    expect(e.message).toBe('undefined variable: hostname');
    expect([e.line, e.col]).toEqual([2, 9]);
  });

  it('treats an undefined value as missing', () => {
    expect(error('{{ x }}', { x: undefined }).message).toBe('undefined variable: x');
  });

  it('throws on a missing property of an object', () => {
    const e = error('{{ machine.ip }}', { machine: { id: 'm1', name: 'n', environment: 'local' } });
    expect(e.message).toBe('undefined variable: machine.ip');
  });

  it('throws on an unknown filter', () => {
    const e = error('a\n  {{ x | nofilter }}', { x: 1 });
    expect(e.message).toBe('undefined filter: nofilter');
    expect([e.line, e.col]).toEqual([2, 3]);
  });

  it('reports syntax errors with line and col', () => {
    const unclosed = error('line one\nline two\n  {% if x %}\nno end');
    expect(unclosed.message).toBe('tag {% if x %} not closed');
    expect([unclosed.line, unclosed.col]).toEqual([3, 3]);
    const output = error('x\n\n    {{ oops');
    expect(output.message).toBe('output "{{ oops" not closed');
    expect([output.line, output.col]).toEqual([3, 5]);
    const badTag = error('{% frobnicate %}');
    expect(badTag.message).toBe('tag "frobnicate" not found');
    expect([badTag.line, badTag.col]).toEqual([1, 1]);
  });

  it('cannot reach prototype properties', () => {
    expect(error('{{ x.constructor }}', { x: {} }).message).toBe('undefined variable: x.constructor');
    expect(error('{{ x.__proto__ }}', { x: {} }).message).toBe('undefined variable: x.__proto__');
    expect(error('{{ constructor }}').message).toBe('undefined variable: constructor');
    expect(error('{{ s.toString }}', { s: 'abc' }).message).toBe('undefined variable: s.toString');
    // Inherited properties of the scope's own values are invisible too.
    const obj = Object.create({ secret: 'inherited' }) as Record<string, unknown>;
    expect(error('{{ o.secret }}', { o: obj }).message).toBe('undefined variable: o.secret');
  });

  it('has no file system: include, render and layout are not available', () => {
    for (const tag of ['include', 'render', 'layout']) {
      const e = error(`ok\n{% ${tag} "/etc/passwd" %}`);
      expect(e.message).toBe(`tag "${tag}" is not available: templates cannot load other files`);
      expect([e.line, e.col]).toEqual([2, 1]);
    }
  });

  it('bounds runaway templates', () => {
    expect(error('{% for i in (1..100000000) %}x{% endfor %}').message).toMatch(/allocates too much.*the limit/);
  });

  it('renders the same source many times from the cache', () => {
    const src = 'echo {{ n }}';
    for (let n = 0; n < 1000; n++) expect(renderTemplate(src, { n })).toBe(`echo ${n}`);
    // More distinct sources than the cache holds still render correctly.
    for (let n = 0; n < 600; n++) expect(renderTemplate(`#${n} {{ v }}`, { v: 'x' })).toBe(`#${n} x`);
  });
});

describe('templateVariables', () => {
  it('lists the top-level variables a template reads', () => {
    expect(templateVariables('{{ greeting }} {{ machine.name }} {% if fail_verify %}{{ build_id | default: port }}{% endif %}')).toEqual([
      'build_id',
      'fail_verify',
      'greeting',
      'machine',
      'port',
    ]);
  });

  it('leaves out variables the template assigns itself', () => {
    const src = '{% assign a = 1 %}{{ a }}{% capture c %}x{% endcapture %}{{ c }}{% for i in list %}{{ i }}{{ forloop.index }}{% endfor %}';
    expect(templateVariables(src)).toEqual(['list']);
  });

  it('gives each use a position and a path', () => {
    expect(templateVariableUses('a\n  {{ machine.name }} {{ x[y].z }}')).toEqual([
      { name: 'machine', path: ['machine', 'name'], line: 2, col: 6 },
      { name: 'x', path: ['x'], line: 2, col: 25 },
      { name: 'y', path: ['y'], line: 2, col: 27 },
    ]);
  });

  it('throws TemplateError for a template that does not parse', () => {
    expect(() => templateVariables('{{ x | nofilter }}')).toThrow(TemplateError);
  });
});
