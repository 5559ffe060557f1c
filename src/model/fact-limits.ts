/**
 * The bounds of a machine's facts, apart from facts.ts (its TypeBox schema) so that the agent, which
 * gathers facts on every boot of a discovered machine, loads them without the schema library
 * (cli/program.ts `only`).
 */

/** The facts of one machine as sent (JSON, UTF-8), at most: a machine travels whole in lists and events. */
export const MAX_FACTS_BYTES = 64 * 1024;
/** Entries in one list (addresses, disks, MACs) at most. */
export const MAX_FACT_ITEMS = 128;
/** A MAC address as Linux prints it: six lower-case hex pairs joined by colons. */
export const MAC_PATTERN = '^[0-9a-f]{2}(:[0-9a-f]{2}){5}$';
