/** Bounds of phrase lockers' KDF costs (docs/keys.md): what a KeySafe may ask for, and what the CLI may choose. */
export const KDF_LIMITS = Object.freeze({
  maxPbkdf2Rounds: 10_000_000,
  /**
   * The fewest rounds the CLI's --pbkdf2-rounds accepts for a new locker (NIST SP 800-132's minimum).
   * Readers still accept any count ≥ 1: the locker records its own.
   */
  minChosenPbkdf2Rounds: 1_000,
  maxScryptN: 2 ** 20,
  maxScryptR: 32,
  maxScryptP: 16,
  /** 128·N·r bytes is scrypt's memory need. */
  maxScryptMemory: 512 * 2 ** 20,
  minSaltBytes: 8,
  maxSaltBytes: 64,
  /** Phrase lockers one unlock runs the KDF for (bounds the work a hostile KeySafe can ask for). */
  maxPhraseLockersTried: 8,
});

/**
 * Default PBKDF2 rounds of new phrase lockers: PBKDF2-HMAC-SHA-256 (OWASP's 2023 figure) and
 * Workstation's construction (what Workstation itself writes). Here, import-free, so that the CLI's
 * help (src/cli/program.ts, loaded by every process) prints the numbers PHRASE_DEFAULTS (kdf.ts) uses.
 */
export const DEFAULT_ROUNDS = Object.freeze({ pbkdf2Sha256: 600_000, workstation: 10_000 });
