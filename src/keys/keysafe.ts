import { expected } from '../errors.js';
import { KeySafeError, invalidArgument } from './errors.js';
import { decodeField, field, type Field } from './escape.js';
import { decodeBase64String } from './base64.js';
import { parsePass2KeyDict, serializePass2KeyDict, type PhraseKdf } from './kdf.js';

/**
 * VMware key locators ("KeySafe" strings), VMware's public grammar:
 *
 *   keylocator := "vmware:key/" kl                     prefix and type names case-insensitive
 *   kl   := "null/" field | "rawkey/" field
 *         | "phrase/" id "/" keyGenData
 *         | "fqid/" id "/" keyServerId "/" keyId
 *         | ("ldap" | "script" | "role") "/" field ("/" field)*     parsed, kept, not opened
 *         | "list/(" kl ("," kl)* ")"
 *         | "pair/(" lockerKl "," macName "," base64(lockedData) ")"
 *
 * Fields are escaped (escape.ts), so `/ , ( )` never occur inside one: a field runs to the next of those
 * characters (or the end). Each node keeps the exact spelling of its type name and fields, so
 * `KeySafe.parse(s).toString() === s` for every accepted `s`.
 *
 * Inside a pair the parser also checks what unlocking needs: the MAC name (HMAC-SHA-1, HMAC-SHA-256 or VMSEAL-ETM-HMAC-SHA-256),
 * canonical base64 locked data of a possible length (IV 16 ‖ whole AES blocks ‖ MAC), a phrase locker's
 * pass2key dict (KDF, cipher, salt, bounded costs), an fqid locker's provider and key ids.
 */
/**
 * MAC names of a pair. HMAC-SHA-1 and HMAC-SHA-256 are VMware's (MAC over the plaintext);
 * VMSEAL-ETM-HMAC-SHA-256 is vmseal's encrypt-then-MAC construction with HKDF-derived keys, which it
 * writes for its provider lockers (see locked-data.ts and docs/format.md). The names are matched
 * exactly, so the name alone says how the locked data is built.
 */
export const ETM_MAC_NAME = 'VMSEAL-ETM-HMAC-SHA-256';
export type MacName = 'HMAC-SHA-1' | 'HMAC-SHA-256' | typeof ETM_MAC_NAME;
export const MAC_BYTES: Readonly<Record<MacName, number>> = Object.freeze({ 'HMAC-SHA-1': 20, 'HMAC-SHA-256': 32, [ETM_MAC_NAME]: 32 });

export const KEYSAFE_LIMITS = Object.freeze({
  /** Characters of a KeySafe string. */
  maxLength: 65_536,
  /** Nesting of list/pair. vmseal writes depth 2 (list → pair). */
  maxDepth: 8,
  /** Elements of one list. */
  maxListItems: 64,
  /** Bytes of one pair's locked data. */
  maxLockedData: 16_384,
  /** Fields of an ldap/script/role locator. */
  maxFields: 16,
});

const PREFIX = 'vmware:key/';

export interface NullLocator {
  readonly type: 'null';
  readonly spelling: string;
  readonly value: Field;
}
export interface RawKeyLocator {
  readonly type: 'rawkey';
  readonly spelling: string;
  readonly value: Field;
}
export interface PhraseLocator {
  readonly type: 'phrase';
  readonly spelling: string;
  readonly id: Field;
  readonly keyGenData: Field;
  /** Parsed pass2key dict; present when the phrase is a pair's locker. */
  readonly kdf?: PhraseKdf;
}
export interface FqidLocator {
  readonly type: 'fqid';
  readonly spelling: string;
  readonly id: Field;
  readonly keyServerId: Field;
  readonly keyId: Field;
}
export interface OpaqueLocator {
  readonly type: 'ldap' | 'script' | 'role';
  readonly spelling: string;
  readonly fields: readonly Field[];
}
export interface ListLocator {
  readonly type: 'list';
  readonly spelling: string;
  readonly items: readonly KeyLocator[];
}
export interface PairLocator {
  readonly type: 'pair';
  readonly spelling: string;
  readonly locker: KeyLocator;
  readonly mac: Field;
  readonly macName: MacName;
  readonly lockedData: Field;
  /** The decoded locked data: IV 16 ‖ AES-256-CBC ciphertext ‖ MAC. */
  readonly locked: Buffer;
}
export type KeyLocator = NullLocator | RawKeyLocator | PhraseLocator | FqidLocator | OpaqueLocator | ListLocator | PairLocator;

const LOCKER_TYPES = new Set(['null', 'rawkey', 'phrase', 'fqid', 'ldap', 'script', 'role']);

class Parser {
  pos = 0;
  constructor(readonly text: string) {}

  fail(reason: ConstructorParameters<typeof KeySafeError>[0], message: string, at = this.pos): never {
    throw new KeySafeError(reason, at, message);
  }

  expect(ch: string, what: string): void {
    if (this.text[this.pos] !== ch) {
      this.fail('syntax', `expected '${ch}' ${what} but found ${this.describeHere()}`);
    }
    this.pos++;
  }

  /** Name the character at pos without echoing field content (which may be secret, e.g. a rawkey). */
  describeHere(): string {
    const c = this.text[this.pos];
    if (c === undefined) return 'the end of the text';
    if ('/,()'.includes(c)) return `'${c}'`;
    return 'a field character';
  }

  readType(): { type: string; spelling: string; at: number } {
    const at = this.pos;
    const m = /^[A-Za-z0-9]*/.exec(this.text.slice(this.pos, this.pos + 16));
    const spelling = m ? m[0] : '';
    const type = spelling.toLowerCase();
    if (!['null', 'rawkey', 'phrase', 'fqid', 'ldap', 'script', 'role', 'list', 'pair'].includes(type)) {
      this.fail('type', 'expected a locator type (null, rawkey, phrase, fqid, ldap, script, role, list, pair)', at);
    }
    this.pos += spelling.length;
    this.expect('/', `after the locator type '${type}'`);
    return { type, spelling, at };
  }

  readField(what: string): { field: Field; at: number } {
    const at = this.pos;
    let end = at;
    while (end < this.text.length && !'/,()'.includes(this.text[end]!)) end++;
    this.pos = end;
    return { field: decodeField(this.text.slice(at, end), at, what), at };
  }

  parseLocator(depth: number): KeyLocator {
    if (depth > KEYSAFE_LIMITS.maxDepth) this.fail('too-deep', `list/pair nesting deeper than ${KEYSAFE_LIMITS.maxDepth}`);
    const { type, spelling } = this.readType();
    switch (type) {
      case 'null':
      case 'rawkey':
        return { type, spelling, value: this.readField(`the ${type} value`).field };
      case 'phrase': {
        const id = this.readField('the phrase id').field;
        this.expect('/', 'after the phrase id');
        const keyGenData = this.readField('the phrase keyGenData').field;
        return { type, spelling, id, keyGenData };
      }
      case 'fqid': {
        const id = this.readField('the fqid id').field;
        this.expect('/', 'after the fqid id');
        const keyServerId = this.readField('the fqid key server id').field;
        this.expect('/', 'after the fqid key server id');
        const keyId = this.readField('the fqid key id').field;
        return { type, spelling, id, keyServerId, keyId };
      }
      case 'ldap':
      case 'script':
      case 'role': {
        const fields: Field[] = [this.readField(`a ${type} field`).field];
        while (this.text[this.pos] === '/') {
          if (fields.length >= KEYSAFE_LIMITS.maxFields) this.fail('too-many-items', `a ${type} locator has more than ${KEYSAFE_LIMITS.maxFields} fields`);
          this.pos++;
          fields.push(this.readField(`a ${type} field`).field);
        }
        return { type, spelling, fields };
      }
      case 'list': {
        this.expect('(', "after 'list/'");
        const items: KeyLocator[] = [this.parseLocator(depth + 1)];
        while (this.text[this.pos] === ',') {
          if (items.length >= KEYSAFE_LIMITS.maxListItems) this.fail('too-many-items', `a list has more than ${KEYSAFE_LIMITS.maxListItems} elements`);
          this.pos++;
          items.push(this.parseLocator(depth + 1));
        }
        this.expect(')', "or ',' after a list element");
        return { type, spelling, items };
      }
      default: {
        // pair
        this.expect('(', "after 'pair/'");
        const lockerAt = this.pos;
        let locker = this.parseLocator(depth + 1);
        if (!LOCKER_TYPES.has(locker.type)) this.fail('locker', `a pair's locker cannot be a ${locker.type}`, lockerAt);
        this.expect(',', "after a pair's locker");
        const { field: mac, at: macAt } = this.readField('the MAC name');
        if (mac.value !== 'HMAC-SHA-1' && mac.value !== 'HMAC-SHA-256' && mac.value !== ETM_MAC_NAME) {
          this.fail('mac', `unknown MAC name (expected HMAC-SHA-1, HMAC-SHA-256 or ${ETM_MAC_NAME})`, macAt);
        }
        const macName: MacName = mac.value;
        this.expect(',', "after a pair's MAC name");
        const { field: lockedData, at: dataAt } = this.readField('the locked data');
        this.expect(')', "after a pair's locked data");
        const locked = decodeBase64String(lockedData.value ?? '');
        if (locked === undefined) this.fail('base64', 'the locked data is not canonical base64', dataAt);
        const body = locked.length - 16 - MAC_BYTES[macName];
        if (locked.length > KEYSAFE_LIMITS.maxLockedData || body < 16 || body % 16 !== 0) {
          this.fail(
            'length',
            `the locked data is ${locked.length} bytes; expected IV 16 + a positive multiple of 16 + ${MAC_BYTES[macName]} (${macName}), at most ${KEYSAFE_LIMITS.maxLockedData}`,
            dataAt,
          );
        }
        locker = this.checkLocker(locker, lockerAt);
        return { type: 'pair', spelling, locker, mac, macName, lockedData, locked };
      }
    }
  }

  /** Checks a pair's locker needs for unlocking; returns it with its parsed kdf for a phrase. */
  checkLocker(locker: KeyLocator, at: number): KeyLocator {
    if (locker.type === 'phrase') {
      if (locker.id.value === null) this.fail('null-field', 'a phrase locker id cannot be <VMWARE-NULL>', at);
      if (locker.id.value === '') this.fail('empty-field', 'a phrase locker id cannot be empty', at);
      if (locker.keyGenData.value === null || locker.keyGenData.value === '') {
        this.fail('null-field', "a phrase locker's keyGenData must be a pass2key dict", at);
      }
      const kdf = parsePass2KeyDict(locker.keyGenData.value, at);
      return { ...locker, kdf };
    }
    if (locker.type === 'fqid') {
      for (const [f, name] of [
        [locker.keyServerId, 'key server id'],
        [locker.keyId, 'key id'],
      ] as const) {
        if (f.value === null) this.fail('null-field', `an fqid locker's ${name} cannot be <VMWARE-NULL>`, at);
        if (f.value === '') this.fail('empty-field', `an fqid locker's ${name} cannot be empty`, at);
      }
    }
    return locker;
  }
}

function serialize(kl: KeyLocator): string {
  switch (kl.type) {
    case 'null':
    case 'rawkey':
      return `${kl.spelling}/${kl.value.raw}`;
    case 'phrase':
      return `${kl.spelling}/${kl.id.raw}/${kl.keyGenData.raw}`;
    case 'fqid':
      return `${kl.spelling}/${kl.id.raw}/${kl.keyServerId.raw}/${kl.keyId.raw}`;
    case 'ldap':
    case 'script':
    case 'role':
      return `${kl.spelling}/${kl.fields.map((f) => f.raw).join('/')}`;
    case 'list':
      return `${kl.spelling}/(${kl.items.map(serialize).join(',')})`;
    case 'pair':
      return `${kl.spelling}/(${serialize(kl.locker)},${kl.mac.raw},${kl.lockedData.raw})`;
  }
}

/** A parsed KeySafe string: the key locator tree plus the exact prefix spelling. Immutable. */
export class KeySafe {
  private constructor(
    /** The prefix as written (`vmware:key/` in any letter case). */
    readonly prefix: string,
    readonly root: KeyLocator,
  ) {}

  /** Parse a KeySafe string strictly; throws KeySafeError (code ERR_KEYSAFE, `reason`, `position`). */
  static parse(text: string): KeySafe {
    if (typeof text !== 'string') throw invalidArgument(expected('a string', 'the KeySafe text', text));
    if (text.length > KEYSAFE_LIMITS.maxLength) {
      throw new KeySafeError('too-long', KEYSAFE_LIMITS.maxLength, `the text is ${text.length} characters; at most ${KEYSAFE_LIMITS.maxLength} are accepted`);
    }
    const prefix = text.slice(0, PREFIX.length);
    if (prefix.toLowerCase() !== PREFIX) throw new KeySafeError('prefix', 0, `expected the prefix '${PREFIX}'`);
    const p = new Parser(text);
    p.pos = PREFIX.length;
    const root = p.parseLocator(0);
    if (p.pos !== text.length) p.fail('syntax', `expected the end of the text but found ${p.describeHere()}`);
    return new KeySafe(prefix, root);
  }

  /** Wrap a locator tree built with the helpers below (prefix `vmware:key/`). */
  static from(root: KeyLocator): KeySafe {
    return new KeySafe(PREFIX, root);
  }

  toString(): string {
    return this.prefix + serialize(this.root);
  }

  /** The pairs (lockers with their locked data): the root if it is a pair, else the pairs of a root list. */
  get pairs(): PairLocator[] {
    if (this.root.type === 'pair') return [this.root];
    if (this.root.type === 'list') return this.root.items.filter((i): i is PairLocator => i.type === 'pair');
    return [];
  }
}

/** `phrase/<id>/<pass2key dict>` as vmseal writes it. */
export function makePhraseLocator(id: string, kdf: PhraseKdf): PhraseLocator {
  return { type: 'phrase', spelling: 'phrase', id: field(id), keyGenData: field(serializePass2KeyDict(kdf)), kdf };
}

/** `fqid/<VMWARE-NULL>/<providerId>/<keyId>` as vSphere and vmseal write it. */
export function makeFqidLocator(providerId: string, keyId: string): FqidLocator {
  return { type: 'fqid', spelling: 'fqid', id: field(null), keyServerId: field(providerId), keyId: field(keyId) };
}

export function makePair(locker: KeyLocator, macName: MacName, locked: Buffer): PairLocator {
  return { type: 'pair', spelling: 'pair', locker, mac: field(macName), macName, lockedData: field(locked.toString('base64')), locked };
}

export function makeList(items: KeyLocator[]): ListLocator {
  return { type: 'list', spelling: 'list', items };
}
