/**
 * The folder of a Unix socket that only its user may reach: whoever can connect to an NBD socket
 * reads the plaintext, and the control socket carries passphrases. The folder is made with mode
 * 0700 if missing; an existing one must be owned by this user and closed to group and others, so
 * that no one else can reach a socket there even in the moment between listen() and chmod().
 */
import { mkdir, stat } from 'node:fs/promises';
import { ServeError, type ServeErrorCode } from './errors.js';

export async function privateFolder(folder: string, what: string, code: ServeErrorCode): Promise<void> {
  await mkdir(folder, { recursive: true, mode: 0o700 });
  const st = await stat(folder);
  if (st.uid !== process.getuid?.() || (st.mode & 0o077) !== 0) {
    throw new ServeError(code, `the ${what} folder ${folder} is not private (it must be owned by you with mode 0700)`);
  }
}
