/**
 * The built-in boot environments' names, apart from boot.ts so that the agent, which reports the bootenv
 * it booted, loads them without the content model's schemas (the agent starts on every boot of a
 * discovered machine; cli/program.ts `only`).
 */

/** The boot environment that boots a machine from its own disk (iPXE `exit`; on UEFI, the boot order). */
export const LOCAL_BOOTENV = 'local';
/** The boot environment unknown machines get, when the endpoint runs discovery. */
export const DISCOVERY_BOOTENV = 'discovery';
