/**
 * Host ownership of machines when several `takt serve` replicas share one database (issue #15): a
 * host-bound broker (local, netns, qemu) makes a machine's sandbox, namespace or VM on the host of the
 * replica that was asked, so the machine records that replica's endpoint id (Machine.host) and only that
 * replica adopts, powers and destroys it. The others change the record; the owner acts on the event.
 */
import type { Machine } from '../model/machine.js';

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
