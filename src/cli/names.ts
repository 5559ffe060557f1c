/** Machine names for lists that carry machine ids (jobs, work orders): people read names, scripts keep ids. */
import type { ApiClient } from '../client/http.js';
import type { Machine } from '../model/machine.js';

const enc = encodeURIComponent;

/**
 * id → name for the distinct machine ids given, one lookup per machine; a machine that is gone (deleted)
 * is left out, so the caller shows its id.
 */
export async function machineNames(api: ApiClient, ids: Iterable<string>): Promise<Map<string, string>> {
  const names = new Map<string, string>();
  await Promise.all(
    [...new Set(ids)].map(async (id) => {
      const m = await api.get<Machine>(`/machines/${enc(id)}`).catch(() => null);
      if (m) names.set(id, m.name);
    }),
  );
  return names;
}
