// Worker entry for the fanout bench: tsx registers its loader per thread, so the worker registers it
// itself before loading the TypeScript module (a Worker does not inherit the parent's loader).
import { register } from 'tsx/esm/api';

register();
await import('./subscribers.ts');
