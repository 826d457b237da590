/**
 * The shape of a copy job's output that follows from its input and options: its subformat (when
 * none is given), whether it is sparse, and the geometry it inherits (adapter, hardware version,
 * grain). One place, because the copy job and the decision whether a convert needs keys
 * (ciphertext-copy.ts) must see the same output.
 */
import { ADAPTER_TYPES, type CreateDiskOptions, type VirtualDisk } from '../vmdk/index.js';
import { isReadOnlySubformat } from '../vmdk/read-only-formats.js';
import { encryptedSubformatFor } from '../disk/for-pipeline.js';
import type { OutputOptions, OutputSubformat } from './options.js';

const VMFS_ALIASES = new Set(['vmfsThin', 'vmfsPreallocated', 'vmfsEagerZeroedThick']);

/** The output subformat: `opts.subformat`, else the input's (an encrypted output's for an encrypting job). */
export function outputSubformat(stored: VirtualDisk, opts: Pick<OutputOptions, 'subformat'>, encrypting: boolean): OutputSubformat {
  if (opts.subformat !== undefined) return opts.subformat;
  const input = stored.subformat;
  if (VMFS_ALIASES.has(input)) return 'vmfs';
  // vSphere's delta disks are read, never written: their copy is the sparse disk vmseal writes.
  if (isReadOnlySubformat(input)) return 'monolithicSparse';
  return (encrypting ? encryptedSubformatFor(input) : input) as OutputSubformat;
}

/** Whether the output subformat stores grains (allocated on write) rather than every byte. */
export function isSparseOutput(subformat: string): boolean {
  return /sparse|streamOptimized/i.test(subformat);
}

/** The geometry the output takes from the input where the options do not say. */
export function inherited(stored: VirtualDisk, opts: OutputOptions, sparseOut: boolean): Pick<CreateDiskOptions, 'adapterType' | 'hwVersion' | 'grainSize'> {
  const d = stored.descriptor;
  const out: Pick<CreateDiskOptions, 'adapterType' | 'hwVersion' | 'grainSize'> = {};
  const adapter = opts.adapterType ?? d?.get('ddb.adapterType');
  if (adapter !== undefined && (ADAPTER_TYPES as readonly string[]).includes(adapter)) out.adapterType = adapter as CreateDiskOptions['adapterType'];
  else if (opts.adapterType !== undefined) out.adapterType = opts.adapterType; // let the VMDK layer report the bad value
  const hw = opts.hwVersion ?? d?.get('ddb.virtualHWVersion');
  if (hw !== undefined && (opts.hwVersion !== undefined || /^[1-9][0-9]{0,2}$/.test(String(hw)))) out.hwVersion = hw;
  // Not the grain of an ESX delta disk (512 B or 4 KiB): a hosted sparse disk of those would need a
  // directory 16–128 times qemu's; it gets the default 64 KiB.
  const g = opts.grainSize ?? (sparseOut && !isReadOnlySubformat(stored.subformat) ? stored.grainSize : undefined);
  if (g !== undefined && (opts.grainSize !== undefined || (g >= 4096 && g <= 1 << 20))) out.grainSize = g;
  return out;
}
