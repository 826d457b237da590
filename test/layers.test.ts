// The layer rules of CONTRIBUTING.md, checked on the sources: a layer imports only from layers
// below it (util <- xts <- vmdk <- keys/kmip <- disk <- pipeline <- backup <- vm <- serve <- cli), and the pipeline
// reaches the disk layer through one door, src/disk/for-pipeline.ts.
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { describe, expect, it } from 'vitest';

const src = resolve(import.meta.dirname, '..', 'src');

/** Rank of each layer; a module may import from its own layer and from lower ranks. */
const RANK: Record<string, number> = { util: 0, xts: 1, vmdk: 2, keys: 3, kmip: 3.5, disk: 4, pipeline: 5, backup: 5.5, vm: 5.6, serve: 6, cli: 7 };
// backup (ciphertext backup repositories) and vm (VM folders: .vmx, state files, vTPM) run
// pipeline jobs and sit below serve, which serves their disks and takes live backups.
// kmip's provider implements the key layer's KeyProvider interface, so kmip sits just above keys:
// keys must never need KMIP (it stays usable with a local provider alone).

interface Edge {
  from: string; // path relative to src/, with '/'
  to: string;
}

function layerOf(path: string): string | undefined {
  const first = path.split('/')[0]!;
  return first in RANK ? first : undefined; // src/errors.ts and src/index.ts belong to no layer
}

/** Every relative import and re-export (static and dynamic) of every .ts file under src/. */
function edges(): Edge[] {
  const out: Edge[] = [];
  const files = readdirSync(src, { recursive: true, encoding: 'utf8' }).filter((f) => f.endsWith('.ts'));
  const re = /(?:^|[\s;])(?:import|export)\s[^;]*?from\s*['"](\.{1,2}\/[^'"]+)['"]|import\(\s*['"](\.{1,2}\/[^'"]+)['"]\s*\)/g;
  for (const f of files) {
    const text = readFileSync(join(src, f), 'utf8');
    for (const m of text.matchAll(re)) {
      const spec = (m[1] ?? m[2])!;
      const target = relative(src, resolve(dirname(join(src, f)), spec))
        .split(sep)
        .join('/');
      out.push({ from: f.split(sep).join('/'), to: target.replace(/\.js$/, '.ts') });
    }
  }
  return out;
}

describe('layers', () => {
  const all = edges();

  it('finds the imports it checks', () => {
    expect(all.length).toBeGreaterThan(200);
    expect(all).toContainEqual({ from: 'pipeline/copy.ts', to: 'disk/for-pipeline.ts' });
  });

  it('no layer imports from a layer above it', () => {
    const upward = all
      .filter((e) => {
        const a = layerOf(e.from);
        const b = layerOf(e.to);
        return a !== undefined && b !== undefined && RANK[b]! > RANK[a]!;
      })
      .map((e) => `${e.from} -> ${e.to}`);
    expect(upward).toEqual([]);
  });

  it('src/errors.ts, the root of every layer, imports nothing of vmseal', () => {
    expect(all.filter((e) => e.from === 'errors.ts')).toEqual([]);
  });

  it('the pipeline imports the disk layer only through src/disk/for-pipeline.ts', () => {
    const around = all
      .filter((e) => e.from.startsWith('pipeline/') && e.to.startsWith('disk/') && e.to !== 'disk/for-pipeline.ts')
      .map((e) => `${e.from} -> ${e.to}`);
    expect(around).toEqual([]);
  });
});
