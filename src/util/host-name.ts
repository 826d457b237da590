/**
 * This machine's host name for the records vmseal leaves beside the files it works on (a lock's
 * holder record, a staging folder's owner.json), which say who holds or writes a file.
 *
 * Read once per thread: os.hostname() is a uname(2) each time, and a batch wrote two such records
 * per image. A host renamed while a job runs leaves its old name in them, as it would in records
 * written just before the rename.
 */
import { hostname } from 'node:os';

let name: string | undefined;

export function hostName(): string {
  return (name ??= hostname());
}
