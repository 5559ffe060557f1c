/**
 * Request validators compiled on first use instead of when the app starts. Fastify compiles an Ajv
 * validator for every route's schema before it listens: about 0.4 CPU-s of a `takt serve` start (measured
 * 1.21 → 0.8 under load), for ~60 route parts of which a short-lived endpoint (a test's) answers a few.
 * The compiler is fastify's own (@fastify/ajv-compiler, with the app's Ajv options), so what is checked and
 * how it is worded do not change; only when the work is done. Every route part's schema is compiled by
 * test/permissions.test.ts (through `pending`), so a bad one fails the tests, not a request.
 */
import { AjvCompiler } from '@fastify/ajv-compiler';

/** What fastify passes a validator compiler for one route part (its schema and where it is used). */
type RouteSchema = { schema: unknown; method: string; url: string; httpPart?: string };
/** A compiled validator as fastify calls it: Ajv's with `errors` after a failed call. */
type Validator = ((data: unknown, ctx?: unknown) => unknown) & { errors?: unknown; schemaEnv?: unknown };
/** fastify's `compilersFactory.buildValidator`: per schema set and Ajv options, a compiler per route part. */
export type ValidatorFactory = (externalSchemas: unknown, options: unknown) => (route: RouteSchema) => Validator;

/** A route part whose validator is not compiled yet, and the call that compiles it (throws for a bad schema). */
export interface PendingValidator {
  route: string;
  compile: () => void;
}

/**
 * A `schemaController.compilersFactory.buildValidator` for Fastify(): fastify's default factory, whose
 * validators compile on their first call. The wrapper has `schemaEnv` set so fastify always passes the
 * parent data (Ajv's `useDefaults` may replace a root value), and copies `errors` after each call, which
 * fastify reads at once. `pending`, when given, gets every route part's compile call (tests compile them all).
 */
export function lazyValidators(pending?: PendingValidator[]): ValidatorFactory {
  const eager = (AjvCompiler as unknown as () => ValidatorFactory)();
  return (externalSchemas, options) => {
    const compile = eager(externalSchemas, options);
    return (route) => {
      let real: Validator | undefined;
      const validate: Validator = (data, ctx) => {
        real ??= compile(route);
        const ok = real.schemaEnv ? real(data, ctx) : real(data);
        validate.errors = real.errors;
        return ok;
      };
      validate.schemaEnv = true;
      validate.errors = null;
      pending?.push({ route: `${route.method} ${route.url} ${route.httpPart ?? ''}`.trim(), compile: () => void (real ??= compile(route)) });
      return validate;
    };
  };
}
