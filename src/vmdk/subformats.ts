/**
 * The subformats vmseal can write. A module of its own, with no imports, because the CLI's grammar
 * (help texts, `--subformat` checks) and the disk layer's encryption policy need the list at start-up,
 * before any command runs: importing it from ./create.ts would load the VMDK writers (and the
 * native addon's loader) into every `vmseal` process, `vmseal --version` included.
 */
export type CreateSubformat = 'raw' | 'monolithicSparse' | 'monolithicFlat' | 'twoGbMaxExtentSparse' | 'twoGbMaxExtentFlat' | 'streamOptimized' | 'vmfs';
export const CREATE_SUBFORMATS: readonly CreateSubformat[] = [
  'raw',
  'monolithicSparse',
  'monolithicFlat',
  'twoGbMaxExtentSparse',
  'twoGbMaxExtentFlat',
  'streamOptimized',
  'vmfs',
];
