// A `vmseal vm tpm` killed with SIGKILL (no handler of vmseal's runs) must not leave its swtpm
// running and holding the vTPM state: swtpm is started with SIGTERM as its parent-death signal
// (setpriv --pdeathsig), so the kernel stops it when vmseal dies; the next start then succeeds.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cleanEnv, vmsealChild } from '../cli/run-cli.js';
import { tempDir } from '../disk/helpers.js';

const have = (exe: string) => spawnSync('sh', ['-c', `command -v ${exe}`]).status === 0;
const tools = have('swtpm') && have('swtpm_setup') && have('setpriv');

let tmp: ReturnType<typeof tempDir>;
beforeAll(() => {
  tmp = tempDir('vmseal-tpm-pdeath-');
});
afterAll(() => tmp?.cleanup());

/** Pids of the processes whose command line holds `needle`. */
function pidsWith(needle: string): number[] {
  const out: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      if (readFileSync(`/proc/${name}/cmdline`, 'utf8').includes(needle)) out.push(Number(name));
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

const alive = (pid: number): boolean => existsSync(`/proc/${pid}`) && !/^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, 'utf8'));

/** Wait (at most `ms`) for `pid` to be gone. */
async function gone(pid: number, ms: number): Promise<boolean> {
  for (const end = Date.now() + ms; Date.now() < end; await new Promise((r) => setTimeout(r, 100))) {
    try {
      if (!alive(pid)) return true;
    } catch {
      return true;
    }
  }
  return false;
}

async function startTpm(dir: string, env: NodeJS.ProcessEnv): Promise<ReturnType<typeof vmsealChild>> {
  const child = vmsealChild(['vm', 'tpm', dir], env);
  let text = '';
  await new Promise<void>((ready, fail) => {
    child.stderr.on('data', (d: Buffer) => {
      text += d.toString();
      if (/qemu options: /.test(text)) ready();
    });
    child.once('exit', (code) => fail(new Error(`vmseal vm tpm exited (${code}): ${text}`)));
  });
  return child;
}

describe.skipIf(!tools)('vmseal vm tpm killed with SIGKILL', () => {
  it('takes its swtpm with it, and the next start gets the state', async () => {
    const dir = join(tmp.dir, 'vm');
    mkdirSync(dir);
    writeFileSync(join(dir, 'vmseal-vm.json'), JSON.stringify({ format: 'vmseal-vm', version: 1, tpm: { state: 'tpm' } }));
    // The vTPM's socket folder goes under XDG_RUNTIME_DIR: in tmp, so the killed run's folder is removed with it.
    const env = cleanEnv({ VMSEAL_HOME: join(tmp.dir, 'home'), XDG_RUNTIME_DIR: tmp.dir });
    const stateArg = `dir=${join(dir, 'tpm')},`;
    const first = await startTpm(dir, env);
    const swtpm = pidsWith(stateArg).filter((p) => p !== first.pid);
    try {
      expect(swtpm).toHaveLength(1);
      first.kill('SIGKILL');
      await new Promise((r) => first.once('exit', r));
      expect(await gone(swtpm[0]!, 15_000)).toBe(true);

      const second = await startTpm(dir, env);
      second.kill('SIGTERM');
      expect(await new Promise((r) => second.once('exit', (code) => r(code)))).toBe(0);
    } finally {
      for (const p of pidsWith(stateArg)) process.kill(p, 'SIGKILL');
    }
  });
});
