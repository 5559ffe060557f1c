/**
 * The boot watch (src/provision/boot-watch.ts) with time driven by the test: a boot that is waited for and
 * never shows is reported once, with what was done and what to check; one that shows (a DHCP packet or a
 * script request from any of its MACs) is not; a second power action re-arms from then. And which boot
 * device a machine's bootenv needs first (MachinePower.deviceFor).
 */
import { describe, expect, it } from 'vitest';
import { BootWatch, missedDiskReason, missedReason, type MissedBoot, type WatchTimers } from '../src/provision/boot-watch.js';
import { MachinePower } from '../src/provision/power/machines.js';
import type { MachineBoot } from '../src/model/boot.js';

/** Timers the test advances by hand: `advance(ms)` runs every timer due by then, in order. */
function fakeTimers(): WatchTimers & { advance(ms: number): void; count(): number } {
  let now = 1_764_547_200_000; // 2025-12-01T00:00:00Z
  let seq = 0;
  const due = new Map<number, { at: number; fn: () => void }>();
  return {
    set: (fn, ms) => {
      const id = ++seq;
      due.set(id, { at: now + ms, fn });
      return id;
    },
    clear: (h) => void due.delete(h as number),
    now: () => now,
    advance(ms) {
      const until = now + ms;
      for (let guard = 0; guard < 1000; guard++) {
        const next = [...due.entries()].filter(([, t]) => t.at <= until).sort((a, b) => a[1].at - b[1].at || a[0] - b[0])[0];
        if (!next) break;
        due.delete(next[0]);
        now = next[1].at;
        next[1].fn();
      }
      now = until;
    },
    count: () => due.size,
  };
}

const A = { id: 'm-a', name: 'rack-a', macs: ['52:54:00:00:0a:01', '52:54:00:00:0a:02'] };
const B = { id: 'm-b', name: 'rack-b', macs: ['52:54:00:00:0b:01'] };

type Step = ['expect', typeof A, string] | ['disk', typeof A, string] | ['agent', string, string] | ['seen', string] | ['cancel', string] | ['advance', number];

describe('BootWatch', () => {
  it.each<[string, Step[], Array<[string, string]>]>([
    ['reports a boot that never shows, once, after the bound', [['expect', A, 'power on by qmp'], ['advance', 9_999]], []],
    ['…and at the bound', [['expect', A, 'power on by qmp'], ['advance', 10_000], ['advance', 60_000]], [['rack-a', 'power on by qmp']]],
    ['a DHCP packet from its second MAC is a boot', [['expect', A, 'power on by qmp'], ['advance', 5_000], ['seen', '52:54:00:00:0A:02'], ['advance', 60_000]], []],
    ['a MAC of another machine is not', [['expect', A, 'power cycle by ipmi'], ['seen', B.macs[0]!], ['advance', 10_000]], [['rack-a', 'power cycle by ipmi']]],
    ['an unknown MAC is ignored', [['seen', '52:54:00:ff:ff:ff'], ['advance', 10_000]], []],
    ['a second action re-arms from then; the later cause is the one reported', [['expect', A, 'power on by qmp'], ['advance', 8_000], ['expect', A, 'power cycle by qmp'], ['advance', 8_000]], []],
    ['…and reports it once at its own bound', [['expect', A, 'power on by qmp'], ['advance', 8_000], ['expect', A, 'power cycle by qmp'], ['advance', 2_000], ['advance', 60_000]], [['rack-a', 'power cycle by qmp']]],
    ['cancel (powered off, deleted) stops the wait', [['expect', A, 'power on by qmp'], ['cancel', A.id], ['advance', 60_000]], []],
    ['each machine has its own wait', [['expect', A, 'power on by qmp'], ['advance', 1_000], ['expect', B, 'power on by redfish'], ['seen', A.macs[0]!], ['advance', 60_000]], [['rack-b', 'power on by redfish']]],
    ['a machine without a MAC cannot be recognised, so is not watched', [['expect', { ...A, macs: [] }, 'power on by qmp'], ['advance', 60_000]], []],
    ['a disk boot: reported when no agent comes back', [['disk', A, 'power cycle by qmp'], ['advance', 10_000]], [['rack-a', 'disk: power cycle by qmp']]],
    ['…its MAC on the boot services is not the OS coming back', [['disk', A, 'power cycle by qmp'], ['seen', A.macs[0]!], ['advance', 10_000]], [['rack-a', 'disk: power cycle by qmp']]],
    ['…nor the old in-memory OS\'s agent (bootenv discovery)', [['disk', A, 'power cycle by qmp'], ['agent', A.id, 'discovery'], ['advance', 10_000]], [['rack-a', 'disk: power cycle by qmp']]],
    ['…its agent claiming from bootenv local is', [['disk', A, 'power cycle by qmp'], ['advance', 9_000], ['agent', A.id, 'local'], ['advance', 60_000]], []],
    ['…another machine\'s agent is not', [['disk', A, 'power cycle by qmp'], ['agent', B.id, 'local'], ['advance', 10_000]], [['rack-a', 'disk: power cycle by qmp']]],
    ['…a disk boot needs no MAC (the agent is recognised by its token)', [['disk', { ...A, macs: [] }, 'power cycle by redfish'], ['advance', 10_000]], [['rack-a', 'disk: power cycle by redfish']]],
    ['an agent from local does not end a network boot waited for (only the firmware on the wire does)', [['expect', A, 'power on by qmp'], ['agent', A.id, 'local'], ['advance', 10_000]], [['rack-a', 'power on by qmp']]],
  ])('%s', async (_what, steps, want) => {
    const timers = fakeTimers();
    const missed: MissedBoot[] = [];
    const w = new BootWatch({ boundMs: 10_000, timers, onMissed: (m) => void missed.push(m) });
    for (const s of steps) {
      if (s[0] === 'expect') w.expect(s[1], s[2]);
      else if (s[0] === 'disk') w.expect(s[1], s[2], 'disk');
      else if (s[0] === 'agent') w.agentBooted(s[1], s[2]);
      else if (s[0] === 'seen') w.seen(s[1]);
      else if (s[0] === 'cancel') w.cancel(s[1]);
      else timers.advance(s[1]);
    }
    await new Promise((r) => setImmediate(r)); // onMissed runs after the timer's turn
    expect(missed.map((m) => [m.machine.name, m.via === 'disk' ? `disk: ${m.cause}` : m.cause])).toEqual(want);
    w.close();
    expect(timers.count()).toBe(0);
  });

  it('says what was done, what was not seen, and what to check', () => {
    expect(missedReason(A, 'power cycle by ipmi', Date.UTC(2026, 11, 1, 3, 0, 0), 90_000)).toBe(
      'did not boot from the network within 90 s of power cycle by ipmi at 2026-12-01T03:00:00.000Z: no DHCP request and no boot script request from 52:54:00:00:0a:01, 52:54:00:00:0a:02. ' +
        'Check that the machine is on (takt machines power rack-a status), that network boot (PXE) is enabled and first in its boot order (takt machines power rack-a cycle --next-boot pxe), ' +
        'and that this NIC is on the provisioning network',
    );
    expect(missedReason(B, 'power on by qmp', 0, 300_000)).toContain('within 5 min of power on by qmp');
  });

  it('a disk boot that did not come back says so, and what to check', () => {
    expect(missedDiskReason(A, 'power cycle by qmp', Date.UTC(2026, 11, 1, 3, 0, 0), 300_000)).toBe(
      'did not come back from its disk within 5 min of power cycle by qmp at 2026-12-01T03:00:00.000Z: no takt agent of rack-a claimed work from the booted disk (bootenv local). ' +
        'Check its console: the image may not boot or may run no takt agent, the disk may not be first in its boot order (takt machines power rack-a cycle --next-boot disk), ' +
        'or its agent could not join (takt audit --principal machine:rack-a); takt machines rebuild rack-a deploys again',
    );
  });

  it('refuses a bound that is not a positive number of ms', () => {
    for (const boundMs of [0, -1, Number.NaN, Infinity]) expect(() => new BootWatch({ boundMs, onMissed: () => undefined })).toThrow(RangeError);
  });
});

describe('MachinePower.deviceFor: the boot device a bootenv needs first', () => {
  const boot = (bootenv: string, firmware: MachineBoot['firmware']): MachineBoot => ({ macs: ['52:54:00:00:00:01'], uuid: null, firmware, bootenv });
  it.each<[string, MachineBoot | undefined, 'pxe' | 'disk' | null]>([
    ['a bootenv served from the network: the NIC', boot('discovery', 'bios'), 'pxe'],
    ['…on UEFI too', boot('sledge', 'uefi'), 'pxe'],
    ['…whatever the firmware', boot('sledge', null), 'pxe'],
    ['local on UEFI: the disk (iPXE exit does not fall through everywhere)', boot('local', 'uefi'), 'disk'],
    ['local on BIOS: leave the network first (exit falls through; takt keeps the next boot)', boot('local', 'bios'), null],
    ['local, firmware unknown: leave it', boot('local', null), null],
    ['not network-booted: nothing', undefined, null],
  ])('%s', (_what, b, want) => {
    expect(MachinePower.deviceFor(b ? { boot: b } : {})).toBe(want);
  });
});
