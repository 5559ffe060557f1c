/**
 * Host ownership of machines when several `takt serve` replicas share one database (issue #15): a
 * host-bound broker (local, netns, qemu) makes a machine's sandbox, namespace or VM on the host of the
 * replica that was asked, so the machine records that replica's endpoint id (Machine.host) and only that
 * replica adopts, powers and destroys it. The others change the record; the owner acts on the event.
 */
import { assertDeclared } from '../engine/declared.js';
import type { Engine, MachineInput } from '../engine/engine.js';
import type { Machine } from '../model/machine.js';

/**
 * `engine.createMachine`, with the machine's host (`host`: this replica's endpoint id) recorded in the
 * same transaction as the machine itself, so that no replica ever sees it without its owner. The same
 * checks, in the same order, as createMachine (newMachine, then the undeclared-params check, then the
 * insert). Without `host` it is createMachine.
 * @throws TaktError as Engine.createMachine does (invalid, conflict, not_found).
 */
export async function createHostedMachine(engine: Engine, input: MachineInput, author: string, host: string | undefined): Promise<{ machine: Machine; token: string }> {
  if (host === undefined) return engine.createMachine(input, author);
  const made = await engine.newMachine(input);
  if (!input.allowUndeclared) assertDeclared(engine.content.current, input.params);
  made.machine.host = host;
  await engine.store.transact((tx) => engine.insertMachine(tx, made.machine, made.token, author));
  return made;
}

/**
 * Whether the replica with endpoint id `self` acts on `machine`'s host resources (powers or destroys
 * them): its own machines, and machines with no host recorded (made before replicas, or by a broker that
 * is not host-bound), on which every replica acts as an endpoint always did — a no-op where the machine's
 * sandbox is not held. (Adoption at start is stricter: cli/serve.ts adopts a host-less machine only where
 * its sandbox is.)
 */
export function hostedHere(machine: Pick<Machine, 'host'>, self: string | undefined): boolean {
  return !machine.host || self === undefined || machine.host === self;
}
