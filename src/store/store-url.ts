/**
 * What a `--store` / `TAKT_STORE` value names, and how it may be shown: pure text functions, kept apart
 * from postgres.ts so the CLI can use them without loading the database drivers (kysely, pg) at start.
 */

/** Whether `spec` names a PostgreSQL database (`postgres://…` or `postgresql://…`). */
export function isPostgresUrl(spec: string): boolean {
  return /^postgres(ql)?:\/\//i.test(spec);
}

/**
 * A PostgreSQL URL as it may be shown or logged: the password (in the URL's user info or a `password`
 * query parameter) replaced by `****`. Text that is not a URL is reduced to its scheme.
 */
export function redactUrl(url: string): string {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return `${/^[a-z][a-z0-9+.-]*:/i.exec(url)?.[0] ?? ''}//(unparsable URL)`;
  }
  if (u.password) u.password = '****';
  for (const k of [...u.searchParams.keys()]) if (/pass/i.test(k)) u.searchParams.set(k, '****');
  return u.toString();
}
