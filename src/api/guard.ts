/**
 * The endpoint's front door, decided before any route runs: which Host names it answers to (DNS
 * rebinding), which response headers every answer carries, and the shape of query strings and JSON bodies
 * it accepts. Authentication itself is in auth.ts; this module only bounds and checks what arrives.
 * Pure functions, so each rule is table-tested without a server.
 */
import { createHash } from 'node:crypto';
import { isIP } from 'node:net';
import { TaktError } from '../model/errors.js';

/**
 * Names a browser may use to reach this endpoint besides IP literals (the endpoint's hostname, `localhost`,
 * and operator-given names). An IP literal is always accepted: DNS rebinding needs a *name* the attacker
 * controls to resolve to this endpoint, and a page loaded from an IP literal is same-origin with it anyway.
 */
export function hostNames(extra: readonly string[]): Set<string> {
  return new Set(['localhost', ...extra].map((n) => n.toLowerCase().replace(/\.$/, '')));
}

/**
 * True when the `Host` header names this endpoint: an IP literal (`127.0.0.1:8092`, `[::1]:8092`) or one
 * of `names` (case-insensitive, with or without a port, with or without a trailing dot).
 * Source: DNS rebinding defence as in RFC 9110 §7.2 (the server checks the authority it is asked for).
 */
export function allowedHost(header: string | undefined, names: ReadonlySet<string>): boolean {
  if (!header) return false;
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]+))(?::(\d{1,5}))?$/.exec(header.trim());
  if (!m) return false;
  if (m[1] !== undefined) return isIP(m[1]) === 6;
  const host = m[2]!.toLowerCase().replace(/\.$/, '');
  return isIP(host) === 4 || names.has(host);
}

/**
 * The request line and Host as a server (not a proxy) must see them: the target in origin-form (`/path`,
 * never `http://other/path`, which would route by path while naming another host), and exactly one Host
 * header (with two, Node keeps the first while a proxy in front may have used the other).
 * Source: RFC 9112 §3.2 (origin-form; a server must answer 400 to more than one Host).
 * @throws TaktError bad_request.
 */
export function checkTarget(url: string, rawHeaders: readonly string[]): void {
  if (!url.startsWith('/')) throw new TaktError('bad_request', 'the request target must be a path (origin-form, e.g. GET /api/v1/health); this endpoint is not a proxy');
  let hosts = 0;
  for (let i = 0; i < rawHeaders.length; i += 2) if (rawHeaders[i]!.toLowerCase() === 'host') hosts++;
  if (hosts === 0) throw new TaktError('bad_request', 'the request has no Host header; HTTP/1.1 needs one');
  if (hosts > 1) throw new TaktError('bad_request', 'the request has more than one Host header');
}

/** Headers on every answer: no sniffing, no framing, no referrer, and an id to find the request in the log. */
export const SECURITY_HEADERS: Readonly<Record<string, string>> = {
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  'referrer-policy': 'no-referrer',
  'cross-origin-opener-policy': 'same-origin',
  'cross-origin-resource-policy': 'same-origin',
};

/** The API's own CSP: JSON and event streams never need to load or run anything. */
export const API_CSP = "default-src 'none'; frame-ancestors 'none'";

/**
 * A Content-Security-Policy for the UI page: only its own inline scripts (by sha256, so an injected
 * script does not run), fetches to this origin only, no framing, no plugins, no form posts elsewhere.
 * Inline style attributes stay allowed (the page's bars are sized with them; styles cannot run code).
 * Source: CSP Level 3, §2.3.1 hash-source.
 */
export function uiCsp(html: string): string {
  const hashes = [...html.matchAll(/<script(?:\s[^>]*)?>([\s\S]*?)<\/script>/gi)].map((m) => `'sha256-${createHash('sha256').update(m[1]!).digest('base64')}'`);
  return [
    "default-src 'none'",
    `script-src ${hashes.join(' ') || "'none'"}`,
    "style-src 'unsafe-inline'",
    "connect-src 'self'",
    "img-src 'self' data:",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
  ].join('; ');
}

/**
 * Query strings carry one value per name: a repeated name (`?state=a&state=b`) or an empty value
 * (`?name=`) is refused, so a filter given by mistake cannot silently widen to "everything".
 * @throws TaktError bad_request naming the parameter.
 */
export function checkQuery(query: unknown): void {
  if (!query || typeof query !== 'object') return;
  for (const [name, value] of Object.entries(query as Record<string, unknown>)) {
    if (Array.isArray(value)) throw new TaktError('bad_request', `query parameter '${name}' is given more than once; give it once`, { path: name });
    if (value === '') throw new TaktError('bad_request', `query parameter '${name}' is empty; give a value or leave it out`, { path: name });
  }
}

/** Deepest nesting of objects and arrays a JSON request body may have (params deeper than this are refused). */
export const MAX_JSON_DEPTH = 64;

/**
 * The nesting depth of a JSON text, counted without parsing it (strings and their escapes are skipped), so
 * a body nested 10,000 deep is refused before a recursive parser, validator or serialiser meets it.
 */
export function jsonDepth(text: string): number {
  let depth = 0;
  let max = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 0x5c) i++; // backslash: skip the escaped character
      else if (c === 0x22) inString = false;
    } else if (c === 0x22) inString = true;
    else if (c === 0x7b || c === 0x5b) {
      if (++depth > max) max = depth;
    } else if (c === 0x7d || c === 0x5d) depth--;
  }
  return max;
}

/**
 * Parses a JSON request body: bounded depth, and no `__proto__`/`constructor.prototype` keys (prototype
 * poisoning once merged into another object).
 * @throws TaktError bad_request (not JSON, too deep, poisoned).
 */
export function parseJsonBody(text: string): unknown {
  if (text.trim() === '') throw new TaktError('bad_request', 'the body is empty but its content-type says JSON; send a JSON document or no content-type');
  const depth = jsonDepth(text);
  if (depth > MAX_JSON_DEPTH) throw new TaktError('bad_request', `the JSON body is nested ${depth} deep; at most ${MAX_JSON_DEPTH} levels are accepted`);
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new TaktError('bad_request', `the body is not valid JSON: ${(err as Error).message}`);
  }
  if (text.includes('__proto__') || text.includes('constructor')) assertNoPoison(value);
  return value;
}

function assertNoPoison(v: unknown): void {
  const stack = [v];
  while (stack.length > 0) {
    const x = stack.pop();
    if (!x || typeof x !== 'object') continue;
    for (const k of Object.keys(x)) {
      const child = (x as Record<string, unknown>)[k];
      if (k === '__proto__' || (k === 'constructor' && child && typeof child === 'object' && Object.hasOwn(child, 'prototype'))) {
        throw new TaktError('bad_request', `the JSON body has a forbidden key '${k}'`);
      }
      stack.push(child);
    }
  }
}
