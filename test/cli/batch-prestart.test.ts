// A batch's worker threads start while the CLI loads (src/cli/batch-worker-start.ts): bin/vmseal.js
// starts as many as the batch's plan will want, from the command line alone, before it compiles the
// CLI; the batch claims them and stops the ones its plan does not take. The built CLI runs with a
// preload that records, for every worker thread, which script constructed it (the loader's
// batch-worker-start.js, or the CLI's main.js) and whether it was stopped.
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { once } from 'node:events';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { claimPrestartedWorkers, jobsOnCommandLine, prestartBatchWorkers, sizeBatchThreadPool, StartedWorker } from '../../src/cli/batch-worker-start.js';
import { cleanEnv, vmseal } from './run-cli.js';

let dir: string;
// prestartBatchWorkers sizes this process's thread pool through its environment: put it back.
const poolSize = process.env.UV_THREADPOOL_SIZE;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'vmseal-batch-prestart-'));
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
  if (poolSize === undefined) delete process.env.UV_THREADPOOL_SIZE;
  else process.env.UV_THREADPOOL_SIZE = poolSize;
});

function images(folder: string, count: number): string {
  const path = join(dir, folder);
  mkdirSync(path);
  for (let i = 0; i < count; i++) writeFileSync(join(path, `d${i}.img`), Buffer.alloc(1 << 20, i + 1));
  return path;
}

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
  /** Each worker thread the process made: the CLI script that constructed it, and whether it was stopped. */
  workers: { by: 'batch-worker-start.js' | 'main.js' | 'other'; terminated: boolean }[];
  /** UV_THREADPOOL_SIZE in the process's environment at its exit. */
  pool: string | undefined;
}

/** Run the built CLI with a preload that wraps worker_threads.Worker to record who makes each one. */
async function runRecordingWorkers(args: string[]): Promise<Run> {
  const preload = join(dir, 'record.cjs');
  const out = join(dir, 'workers.json');
  rmSync(out, { force: true });
  writeFileSync(
    preload,
    `const wt = require('node:worker_threads');
const made = [];
const Base = wt.Worker;
wt.Worker = class extends Base {
  constructor(...args) {
    super(...args);
    const stack = new Error().stack.split('\\n').slice(2).join('\\n');
    this.record = { by: /batch-worker-start\\.js/.test(stack) ? 'batch-worker-start.js' : /main\\.js/.test(stack) ? 'main.js' : 'other', terminated: false };
    made.push(this.record);
  }
  terminate() { this.record.terminated = true; return super.terminate(); }
};
process.on('exit', () => require('node:fs').writeFileSync(${JSON.stringify(out)}, JSON.stringify({ made, pool: process.env.UV_THREADPOOL_SIZE })));\n`,
  );
  const r = await vmseal(args, cleanEnv({ VMSEAL_HOME: join(dir, 'home'), UV_THREADPOOL_SIZE: undefined }), { nodeArgs: ['--require', preload] });
  const seen = existsSync(out) ? (JSON.parse(readFileSync(out, 'utf8')) as { made: Run['workers']; pool?: string }) : { made: [] };
  return { code: r.code, stdout: r.stdout, stderr: r.stderr, workers: seen.made, pool: seen.pool };
}

const batchArgs = (input: string, output: string, ...more: string[]): string[] => [
  'convert',
  input,
  output,
  '--subformat',
  'monolithicSparse',
  '--json',
  ...more,
];

describe("a batch's worker threads start while the CLI loads", () => {
  it('starts the workers of the plan before the CLI, and the batch takes them', async () => {
    const input = images('in', 8);
    const four = await runRecordingWorkers(batchArgs(input, join(dir, 'out4'), '--jobs', '4'));
    expect(four.code, four.stderr).toBe(0);
    expect(JSON.parse(four.stdout)).toMatchObject({ images: 8, converted: 8, workers: 1 });
    // Made by the loader only: the pool took it instead of making its own. (Whether it was stopped
    // at the end depends on the load: a worker still loading when the main thread has converted
    // every image is stopped, not waited for.)
    expect(four.workers.map((w) => w.by)).toEqual(['batch-worker-start.js']);
    // One thread-pool thread per core below libuv's default of 4 (sizeBatchThreadPool).
    const cores = availableParallelism();
    expect(four.pool).toBe(cores < 4 ? String(cores) : undefined);

    const six = await runRecordingWorkers(batchArgs(input, join(dir, 'out6'), '--jobs=6'));
    expect(six.code, six.stderr).toBe(0);
    expect(JSON.parse(six.stdout)).toMatchObject({ images: 8, converted: 8, workers: 2 });
    expect(six.workers.map((w) => w.by)).toEqual(['batch-worker-start.js', 'batch-worker-start.js']);
  });

  it('stops the early workers a small batch does not need, and starts none for --jobs 1', async () => {
    const few = await runRecordingWorkers(batchArgs(images('few', 3), join(dir, 'out-few'), '--jobs', '4'));
    expect(few.code, few.stderr).toBe(0);
    expect(JSON.parse(few.stdout)).toMatchObject({ images: 3, converted: 3, workers: 0 });
    expect(few.workers).toEqual([{ by: 'batch-worker-start.js', terminated: true }]);

    const one = await runRecordingWorkers(batchArgs(images('in1', 4), join(dir, 'out1'), '--jobs', '1'));
    expect(one.code, one.stderr).toBe(0);
    expect(one.workers).toEqual([]);
    expect(one.pool).toBeUndefined();
  });

  it('exits with the usage error of a batch command line at once, its early worker left behind', async () => {
    const r = await runRecordingWorkers(['convert', images('in', 6), join(dir, 'out'), '--jobs', '4']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/a batch conversion needs --subformat/);
    expect(r.workers.map((w) => w.by)).toEqual(['batch-worker-start.js']);
  });
});

describe('jobsOnCommandLine', () => {
  it('reads the last --jobs as commander does, and calls a value --jobs refuses invalid', () => {
    expect(jobsOnCommandLine(['convert', 'a', 'b'])).toBeUndefined();
    expect(jobsOnCommandLine(['convert', 'a', 'b', '--jobs', '6'])).toBe(6);
    expect(jobsOnCommandLine(['convert', '--jobs=3', 'a', 'b', '--jobs', '8'])).toBe(8);
    expect(jobsOnCommandLine(['convert', 'a', 'b', '--jobs', '0'])).toBe('invalid');
    expect(jobsOnCommandLine(['convert', 'a', 'b', '--jobs', 'four'])).toBe('invalid');
    expect(jobsOnCommandLine(['convert', 'a', 'b', '--jobs', '65'])).toBe('invalid');
    expect(jobsOnCommandLine(['convert', 'a', 'b', '--jobs'])).toBe('invalid');
    expect(jobsOnCommandLine(['convert', '--', '--jobs', '6'])).toBeUndefined();
  });
});

describe('prestartBatchWorkers and claimPrestartedWorkers', () => {
  it('starts none for a command line that is not a batch, or whose --jobs the CLI refuses', () => {
    const cli = join(dir, 'cli');
    mkdirSync(cli);
    writeFileSync(join(cli, 'batch-worker.js'), '');
    expect(prestartBatchWorkers(cli, ['--version'])).toBe(0);
    expect(prestartBatchWorkers(cli, ['convert', join(dir, 'a.img'), join(dir, 'b.vmdk')])).toBe(0);
    expect(prestartBatchWorkers(cli, ['convert', dir, join(dir, 'out'), '--jobs', 'x'])).toBe(0);
    expect(prestartBatchWorkers(cli, ['convert', dir, join(dir, 'out'), '--jobs', '2'])).toBe(0);
    expect(prestartBatchWorkers(join(dir, 'no-build'), ['convert', dir, join(dir, 'out'), '--jobs', '8'])).toBe(0);
    expect(claimPrestartedWorkers(4, join(cli, 'batch-worker.js'))).toEqual([]);
  });

  it('claims the early workers of the same script only, and stops the rest', async () => {
    const cli = join(dir, 'cli');
    mkdirSync(cli);
    // A worker script that stays alive until told to stop.
    writeFileSync(join(cli, 'batch-worker.js'), "require('node:worker_threads').parentPort.on('message', () => process.exit(0));\n");
    expect(prestartBatchWorkers(cli, ['convert', dir, join(dir, 'out'), '--jobs', '8'], 2)).toBe(3);
    const claimed = claimPrestartedWorkers(2, join(cli, 'batch-worker.js'));
    expect(claimed).toHaveLength(2);
    // Taken from the slot: a second claim finds none.
    expect(claimPrestartedWorkers(2, join(cli, 'batch-worker.js'))).toEqual([]);
    for (const w of claimed) {
      const exited = once(w.worker, 'exit');
      w.worker.postMessage('stop');
      await exited;
    }
    expect(prestartBatchWorkers(cli, ['convert', dir, join(dir, 'out'), '--jobs', '4'], 2)).toBe(1);
    expect(claimPrestartedWorkers(1, join(dir, 'elsewhere', 'batch-worker.js'))).toEqual([]);
  });
});

describe('sizeBatchThreadPool', () => {
  it("gives a batch's pool one thread per core below libuv's 4, and keeps a size the user set", () => {
    const sized = (cores: number, env: NodeJS.ProcessEnv = {}): string | undefined => {
      sizeBatchThreadPool(cores, env);
      return env.UV_THREADPOOL_SIZE;
    };
    expect(sized(2)).toBe('2');
    expect(sized(3)).toBe('3');
    expect(sized(4)).toBeUndefined();
    expect(sized(16)).toBeUndefined();
    expect(sized(2, { UV_THREADPOOL_SIZE: '8' })).toBe('8');
  });
});

describe('StartedWorker', () => {
  /** The events a worker running `source` raised before it was adopted, as its pool then sees them. */
  async function replayed(source: string): Promise<string[]> {
    const script = join(dir, `w${Math.random().toString(36).slice(2)}.js`);
    writeFileSync(script, source);
    const started = new StartedWorker(script);
    // Not events.once: it rejects on the 'error' this test wants replayed.
    await new Promise((resolve) => started.worker.on('exit', resolve));
    const seen: string[] = [];
    started.adopt({
      message: (m) => seen.push(`message ${(m as { type: string }).type}`),
      error: (err) => seen.push(`error ${err.message}`),
      exit: (code) => seen.push(`exit ${code}`),
    });
    return seen;
  }

  it('replays what a worker said or did before it was adopted, in order', async () => {
    expect(await replayed("require('node:worker_threads').parentPort.postMessage({ type: 'ready' });\nprocess.exit(3);\n")).toEqual([
      'message ready',
      'exit 3',
    ]);
    expect(await replayed("throw new Error('broken build');\n")).toEqual(['error broken build', 'exit 1']);
  });
});
