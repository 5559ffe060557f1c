/**
 * The agent exit-code contract (DESIGN.md): 0 success; 16 stop; 32 power off; 64 reboot; 128 incomplete
 * (run this task again after the stop/reboot); flags add up. Anything else is a failure.
 */
export const EXIT_STOP = 16;
export const EXIT_POWEROFF = 32;
export const EXIT_REBOOT = 64;
export const EXIT_INCOMPLETE = 128;
const FLAG_MASK = EXIT_STOP | EXIT_POWEROFF | EXIT_REBOOT | EXIT_INCOMPLETE;

export interface ExitMeaning {
  success: boolean;
  stop: boolean;
  poweroff: boolean;
  reboot: boolean;
  incomplete: boolean;
}

export function decodeExit(code: number | null): ExitMeaning {
  const none = { stop: false, poweroff: false, reboot: false, incomplete: false };
  if (code === null || !Number.isInteger(code) || code < 0 || (code & ~FLAG_MASK) !== 0) {
    return { success: false, ...none };
  }
  return {
    success: true,
    stop: (code & EXIT_STOP) !== 0,
    poweroff: (code & EXIT_POWEROFF) !== 0,
    reboot: (code & EXIT_REBOOT) !== 0,
    incomplete: (code & EXIT_INCOMPLETE) !== 0,
  };
}
