// Public surface of src/serve: the NBD server (host role) over src/disk's disks.
export { ServeError, type ServeErrorCode } from './errors.js';
export {
  serve,
  exportUri,
  defaultExportName,
  defaultSocketPath,
  DEFAULT_PAYLOAD_BUDGET,
  type NbdHost,
  type ServeAddress,
  type ServeDisk,
  type ServeListen,
  type ServeOptions,
} from './host.js';
export type { ExportInfo } from './export.js';
export { defaultControlPath } from './control.js';
export { controlRequest } from './control-client.js';
export type { ControlCommand, ControlErrorBody, ControlId, ControlReply, ControlRequest } from './control-protocol.js';
export type { UnlockRetry } from './locked.js';
export type { ServeTls } from './tls.js';
export { vmServeDisks } from './vars-export.js';
