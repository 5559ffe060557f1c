/**
 * Power control of a machine, whatever it is: a qemu VM (QMP), a server's BMC (IPMI, Redfish) or a person
 * at the rack (manual). The engine and the CLI use this interface only; each driver maps it onto its
 * protocol. Drivers are stateless between calls apart from what they were configured with, so a restarted
 * endpoint can drive a machine it powered on before.
 */

/** What a machine's power is: `unknown` when the driver cannot tell (manual, or a BMC that does not say). */
export type PowerState = 'on' | 'off' | 'unknown';

/** Boot devices a driver can put first: the network (PXE, then iPXE) or the machine's own disk. */
export type BootDevice = 'pxe' | 'disk';

/** The result of a power action. */
export interface PowerOutcome {
  /**
   * True when the driver did it; false when a person must (the manual driver), in which case
   * `instruction` says exactly what to do.
   */
  done: boolean;
  /** For a person: what to do at the machine, in one sentence. Set when `done` is false. */
  instruction?: string;
  /** Anything the caller should know about how it was done (e.g. a soft off that had to become hard). */
  note?: string;
}

/** `PowerOutcome.note` of an `on` that found the machine on already (every driver says it in these words). */
export const ALREADY_ON = 'already on';
/** `PowerOutcome.note` of an `off` that found the machine off already. */
export const ALREADY_OFF = 'already off';

/** The result of `setNextBoot`. */
export interface BootOutcome extends PowerOutcome {
  /** Whether the setting stays for later boots (true) or applies to the next boot only (false). */
  persistent: boolean;
}

/** Options of `off`. */
export interface OffOptions {
  /**
   * Ask the operating system to shut down (ACPI power button) and wait up to `timeoutMs` for it; when it
   * does not, power off hard and say so in `note`. Default false: off at once, like pulling the plug.
   */
  graceful?: boolean;
  /** Bound on a graceful shutdown in ms (default 60 000). */
  timeoutMs?: number;
}

/**
 * A power driver. Every method is idempotent where the hardware allows (on when on is a no-op).
 * Errors are TaktError: `unavailable` when the machine's controller cannot be reached (message names it),
 * `conflict` when it refuses the request.
 */
export interface PowerDriver {
  /** The driver's name as used in configuration: `qmp`, `manual`, … */
  readonly kind: string;
  /** The machine's power state now. */
  status(): Promise<PowerState>;
  /** Powers on (boots from the first boot device). A no-op when already on. */
  on(): Promise<PowerOutcome>;
  /** Powers off (hard unless `graceful`). A no-op when already off. */
  off(opts?: OffOptions): Promise<PowerOutcome>;
  /** Power cycle / hard reset: the machine boots again from its first boot device; powers on when off. */
  cycle(): Promise<PowerOutcome>;
  /**
   * Makes `device` the first boot device for the next boot (`persistent`: for every later boot too, the
   * IPMI `chassis bootdev … options=persistent` / Redfish `BootSourceOverrideEnabled: Continuous`
   * analogue). Takes effect at the next power on or cycle, not on a running OS. A driver that cannot do
   * one-shot settings applies it persistently and says so in the outcome's `persistent`.
   */
  setNextBoot(device: BootDevice, opts?: { persistent?: boolean }): Promise<BootOutcome>;
}
