/**
 * What every client that sends an image to the catalog does before it reads the file (`takt images
 * import`, the agent's `takt-image publish`): ask whether the version exists. Hashing a file of gigabytes
 * only to have the endpoint refuse the version is minutes lost; one GET says so at once. The endpoint's
 * answer to the upload stays the authority: a version made meanwhile is still refused there (409).
 */
import { TaktError } from '../model/errors.js';
import { imageExists, type Image } from '../model/image.js';
import type { ApiClient } from './http.js';

/**
 * Resolves when `name@version` is not in the catalog (404), or when the caller may not read it (403: the
 * upload then asks again, and its answer decides).
 * @throws TaktError conflict (the endpoint's own words) when the version exists; any other error answer
 *   (a refused token, an endpoint that cannot answer) as it came, which the upload would meet too;
 *   NetworkError when the endpoint cannot be reached.
 */
export async function refuseExistingImage(client: ApiClient, name: string, version: string): Promise<void> {
  try {
    await client.get<Image>(`/images/${encodeURIComponent(name)}/${encodeURIComponent(version)}`);
  } catch (err) {
    if (err instanceof TaktError && (err.code === 'not_found' || err.code === 'forbidden')) return;
    throw err;
  }
  throw imageExists(`${name}@${version}`);
}
