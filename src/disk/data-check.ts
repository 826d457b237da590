/**
 * The data check of format version 2 (docs/format.md, "The data check"): a MAC of the plaintext of
 * data unit 0 under a key derived from the DEK, kept in the descriptor so that a descriptor put on
 * data it does not belong to (rolled back after a deep rekey, or copied from another disk of the
 * same size) is refused before anything is read. The authenticator cannot catch that: it binds the
 * parameters to the DEK, not the descriptor to the data.
 *
 * The line's value is fixed-width, `<committed>.<pending>`, each 64 lowercase hex digits (pending:
 * 64 `-` when there is none), so that every update rewrites the same bytes of the descriptor and an
 * embedded descriptor changes in one sector.
 */
import { createHmac } from 'node:crypto';
import { hkdfSha256 } from '../util/hkdf.js';
import { expected } from '../errors.js';
import { DiskError } from './errors.js';

const HKDF_INFO = 'vmseal data check v1';
const HEX64 = /^[0-9a-f]{64}$/;
/** The pending slot when no update of unit 0 is under way. */
export const NO_PENDING = '-'.repeat(64);
/** Length of the line's value: two 64-character slots and the separator. */
export const DATA_CHECK_LENGTH = 129;

/** The two slots of the line. A reader accepts unit 0 when it matches either. */
export interface DataCheckSlots {
  committed: string;
  pending: string | null;
}

export function formatDataCheck(slots: DataCheckSlots): string {
  return `${slots.committed}.${slots.pending ?? NO_PENDING}`;
}

/** Parse the line's value; null when it is not of the fixed form. */
export function parseDataCheck(text: string): DataCheckSlots | null {
  if (text.length !== DATA_CHECK_LENGTH || text[64] !== '.') return null;
  const committed = text.slice(0, 64);
  const pending = text.slice(65);
  if (!HEX64.test(committed)) return null;
  if (pending === NO_PENDING) return { committed, pending: null };
  return HEX64.test(pending) ? { committed, pending } : null;
}

/**
 * The data-check key of one DEK. Holds only the derived key (HKDF output), never the DEK; wiped by
 * dispose().
 */
export class DataCheckKey {
  #key: Buffer;

  constructor(dek: Uint8Array) {
    this.#key = hkdfSha256(dek, HKDF_INFO, 32);
  }

  /**
   * HMAC-SHA-256(key, diskId as its 16 bytes ‖ unit size as u32 big-endian ‖ plaintext of unit 0),
   * in lowercase hex. Every field has a fixed length, so the concatenation is unambiguous.
   */
  value(diskId: string, unitSize: number, unit0: Uint8Array): string {
    if (unit0.byteLength !== unitSize) {
      throw new DiskError('ERR_INVALID_ARGUMENT', expected(`the ${unitSize} bytes of unit 0`, 'unit0', unit0));
    }
    const size = Buffer.alloc(4);
    size.writeUInt32BE(unitSize);
    return createHmac('sha256', this.#key).update(Buffer.from(diskId, 'hex')).update(size).update(unit0).digest('hex');
  }

  dispose(): void {
    this.#key.fill(0);
  }
}

/** The data check of a DEK for one unit-0 plaintext (a new disk's, a copy's), with no pending value. */
export function dataCheckOf(dek: Uint8Array, diskId: string, unitSize: number, unit0: Uint8Array): string {
  const key = new DataCheckKey(dek);
  try {
    return formatDataCheck({ committed: key.value(diskId, unitSize, unit0), pending: null });
  } finally {
    key.dispose();
  }
}
