/** True if a process with this pid exists (EPERM: it exists but belongs to someone else). Used to tell stale lock files from live ones. */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
