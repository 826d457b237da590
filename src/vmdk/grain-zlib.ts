/**
 * zlib for streamOptimized grains, loaded on first use. Only a streamOptimized disk needs it, and
 * `node:zlib` loaded with the VMDK layer cost every CLI command's start ≈1 ms and a batch worker's
 * ≈5 ms (a worker compiles its built-ins from source under the batch's V8 flag:
 * docs/performance.md, "Worker threads started while the CLI loads"). Loaded with `require`, not
 * `import()`: the CLI's script runs through vm.Script (its code cache), which has no dynamic import.
 */
import { createRequire } from 'node:module';

type Zlib = typeof import('node:zlib');

let loaded: Zlib | undefined;
const zlib = (): Zlib => (loaded ??= createRequire(import.meta.url)('node:zlib') as Zlib);

/** Compress one grain (a streamOptimized grain marker's zlib stream) at `level`. */
export async function deflateGrain(data: Uint8Array, level: number): Promise<Buffer> {
  const z = zlib();
  return new Promise((resolve, reject) =>
    z.deflate(data, { level, strategy: z.constants.Z_DEFAULT_STRATEGY }, (err, out) => (err ? reject(err) : resolve(out))),
  );
}

/** Inflate one grain's zlib stream into at most `maxOutputLength` bytes (zlib fails beyond it). */
export async function inflateGrain(data: Uint8Array, maxOutputLength: number): Promise<Buffer> {
  const z = zlib();
  return new Promise((resolve, reject) => z.inflate(data, { maxOutputLength }, (err, out) => (err ? reject(err) : resolve(out))));
}
