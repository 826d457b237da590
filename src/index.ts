// The package root: every public name of every layer.
export { VmsealError } from './errors.js';
export * from './xts/index.js';
export * from './vmdk/index.js';
export * from './keys/index.js';
export * from './kmip/index.js';
export * from './disk/index.js';
export * from './pipeline/index.js';
