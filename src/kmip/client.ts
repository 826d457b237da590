/**
 * KmipClient: KMIP operations over mutually authenticated TLS to a cluster of nodes.
 *
 * - Each node has a small pool of connections (default at most 2), each carrying one request at a
 *   time; idle connections are kept for reuse (100 Gets = 1 handshake) and do not keep the process
 *   alive.
 * - A request on a reused connection that the server had dropped while idle (closed before a single
 *   byte of answer) is resent once on a fresh connection to the same node.
 * - Failover: nodes are tried starting with the one that last answered, then the others in list
 *   order. A node that cannot be reached, refuses TLS, times out, closes early or answers with bytes
 *   that are not a KMIP response is recorded and the next node is tried. A KMIP answer (success or a
 *   failure status) ends the search. When no node answers: ERR_KMS_UNAVAILABLE naming every node and
 *   its reason (ERR_KMIP_TLS instead when every node refused the TLS session: a configuration error).
 * - Time: each node attempt has `timeoutMs` for connect+handshake and again `timeoutMs` for the
 *   answer; a whole call therefore ends within about nodes × 2 × timeoutMs in the worst case (a node
 *   that refuses the connection fails at once).
 */
import { KmipConnection, type TlsIdentity } from './connection.js';
import { FAILOVER_CODES, KmipError, type KmipNodeFailure } from './errors.js';
import {
  createPayload,
  discoverVersionsPayload,
  encodeRequest,
  expectSuccess,
  getAttributesPayload,
  locateByNamePayload,
  parseDiscoverVersions,
  parseGetSymmetricKey,
  parseLocate,
  parseNames,
  parseQuery,
  parseResponse,
  parseState,
  parseUniqueIdentifier,
  queryPayload,
  revokePayload,
  uniqueIdentifierPayload,
  type CreateSymmetricKeyRequest,
  type Credential,
  type ProtocolVersion,
  type QueryResult,
} from './messages.js';
import { Operation, Tag, nameOf, type KeyState } from './tags.js';
import { decodeTtlv, type TtlvItem, type TtlvWriter } from './ttlv.js';
import { validateClientOptions } from './options.js';

export interface KmipEndpoint {
  readonly host: string;
  readonly port: number;
  /** Name the server's certificate must carry (default: host). */
  readonly servername?: string;
}

export interface KmipClientOptions {
  /** The cluster's nodes, tried in order (at least one). */
  readonly endpoints: readonly KmipEndpoint[];
  /** CA certificate(s) that signed the servers' certificates: PEM text (string or Buffer), or an array of them. */
  readonly ca: string | Buffer | ReadonlyArray<string | Buffer>;
  /** The client certificate (PEM) presented to the server. */
  readonly cert: string | Buffer;
  /** The client certificate's private key (PEM, unencrypted). */
  readonly key: string | Buffer;
  /** Optional Username and Password credential sent in every request header. */
  readonly username?: string;
  readonly password?: string;
  /** Per-node timeout in ms for connecting (TCP + TLS) and, separately, for an answer (default: 10 000). */
  readonly timeoutMs?: number;
  /** Protocol version spoken (default: 1.2). 1.0–1.4 and 2.0 are supported. */
  readonly protocolVersion?: ProtocolVersion | string;
  /** Most connections kept open per node (default: 2). */
  readonly maxConnectionsPerNode?: number;
  /**
   * A pooled connection idle for longer than this is not reused but closed and replaced
   * (default: 60 000). Guards against connections a firewall or NAT has silently forgotten.
   */
  readonly idleTimeoutMs?: number;
  /** Largest response accepted, in bytes (default: 1 MiB). */
  readonly maxMessageSize?: number;
}

export interface KmipClientStats {
  /** TLS sessions established (successful handshakes). */
  readonly connectionsOpened: number;
  /** Requests answered by a server (any result status). */
  readonly requestsAnswered: number;
  /** Requests resent after the server had dropped an idle connection. */
  readonly staleRetries: number;
}

interface Node {
  readonly endpoint: KmipEndpoint;
  readonly label: string;
  readonly idle: KmipConnection[];
  /** Every connection of this node, idle or busy (so close() can drop requests in flight). */
  readonly all: Set<KmipConnection>;
  /** Connections open or being opened, idle or busy. */
  count: number;
  readonly waiters: Array<(conn: KmipConnection | undefined) => void>;
}

export interface KmipSymmetricKey {
  readonly uniqueIdentifier: string;
  readonly keyFormatType: string;
  readonly algorithm?: string;
  readonly lengthBits?: number;
  /** The key material (a fresh buffer the caller owns and should wipe). */
  readonly material: Buffer;
}

export class KmipClient {
  readonly protocolVersion: ProtocolVersion;
  readonly timeoutMs: number;
  private readonly nodes: Node[];
  private readonly tlsIdentity: TlsIdentity;
  private readonly credential: Credential | undefined;
  private readonly maxConnectionsPerNode: number;
  private readonly maxMessageSize: number;
  private readonly idleTimeoutMs: number;
  private preferred = 0;
  private closed = false;
  private counters = { connectionsOpened: 0, requestsAnswered: 0, staleRetries: 0 };

  constructor(options: KmipClientOptions) {
    const o = validateClientOptions(options);
    this.protocolVersion = o.protocolVersion;
    this.timeoutMs = o.timeoutMs;
    this.maxConnectionsPerNode = o.maxConnectionsPerNode;
    this.maxMessageSize = o.maxMessageSize;
    this.idleTimeoutMs = o.idleTimeoutMs;
    this.tlsIdentity = { secureContext: o.secureContext };
    this.credential = o.username === undefined ? undefined : { username: o.username, ...(o.password !== undefined && { password: o.password }) };
    this.nodes = o.endpoints.map((endpoint) => ({ endpoint, label: `${endpoint.host}:${endpoint.port}`, idle: [], all: new Set(), count: 0, waiters: [] }));
  }

  get stats(): KmipClientStats {
    return { ...this.counters };
  }

  /** "host:port" of each node, in configured order. */
  get endpoints(): string[] {
    return this.nodes.map((n) => n.label);
  }

  // -------------------------------------------------------------------------------------------
  // Operations

  /** Discover Versions: the protocol versions the server supports, most preferred first. */
  async discoverVersions(versions: readonly ProtocolVersion[] = []): Promise<ProtocolVersion[]> {
    return this.send(Operation.DiscoverVersions, discoverVersionsPayload(versions), parseDiscoverVersions);
  }

  /** Create a symmetric AES key; returns its Unique Identifier (the key is Pre-Active). */
  async create(req: CreateSymmetricKeyRequest): Promise<string> {
    return this.send(Operation.Create, createPayload(req, this.protocolVersion), parseUniqueIdentifier);
  }

  async activate(uniqueIdentifier: string): Promise<void> {
    await this.send(Operation.Activate, uniqueIdentifierPayload(uniqueIdentifier), parseUniqueIdentifier);
  }

  /** Get a symmetric key's material. */
  async getSymmetricKey(uniqueIdentifier: string): Promise<KmipSymmetricKey> {
    return this.send(Operation.Get, uniqueIdentifierPayload(uniqueIdentifier), (payload) => {
      const key = parseGetSymmetricKey(payload);
      // Copy out of the response buffer, which is wiped as soon as this returns.
      return { ...key, material: Buffer.from(key.material) };
    });
  }

  /** Locate by Name: the Unique Identifiers of the objects (visible to this identity) with that name. */
  async locate(name: string): Promise<string[]> {
    return this.send(Operation.Locate, locateByNamePayload(name, this.protocolVersion), parseLocate);
  }

  /** Get Attributes (State). */
  async getState(uniqueIdentifier: string): Promise<KeyState> {
    return this.send(Operation.GetAttributes, getAttributesPayload(uniqueIdentifier, [Tag.State], this.protocolVersion), parseState);
  }

  /** Get Attributes (Name): every Name of the object. */
  async getNames(uniqueIdentifier: string): Promise<string[]> {
    return this.send(Operation.GetAttributes, getAttributesPayload(uniqueIdentifier, [Tag.Name], this.protocolVersion), parseNames);
  }

  /** Revoke with reason Cessation Of Operation (the default) or another Revocation Reason Code. */
  async revoke(uniqueIdentifier: string, reasonCode?: number): Promise<void> {
    await this.send(Operation.Revoke, revokePayload(uniqueIdentifier, reasonCode), parseUniqueIdentifier);
  }

  async destroy(uniqueIdentifier: string): Promise<void> {
    await this.send(Operation.Destroy, uniqueIdentifierPayload(uniqueIdentifier), parseUniqueIdentifier);
  }

  /** Query the server's operations, object types and vendor identification. */
  async query(): Promise<QueryResult> {
    return this.send(Operation.Query, queryPayload(), parseQuery);
  }

  /**
   * Send one request and parse the success payload with `parse`. The response buffer is wiped
   * after `parse` returns, so `parse` must copy whatever it keeps.
   */
  async send<T>(operation: number, payload: (w: TtlvWriter) => void, parse: (payload: TtlvItem) => T): Promise<T> {
    if (this.closed) throw new KmipError('ERR_KMIP_CLOSED', 'KmipClient was closed');
    const message = encodeRequest(operation, { version: this.protocolVersion, ...(this.credential && { credential: this.credential }) }, payload);
    const opName = nameOf(Operation, operation);
    const failures: KmipNodeFailure[] = [];
    const start = this.preferred;
    try {
      for (let i = 0; i < this.nodes.length; i++) {
        const index = (start + i) % this.nodes.length;
        const node = this.nodes[index]!;
        let frame: Buffer;
        let response;
        try {
          frame = await this.exchange(node, message);
        } catch (err) {
          if (this.closed) throw new KmipError('ERR_KMIP_CLOSED', 'KmipClient was closed', { cause: err });
          if (err instanceof KmipError && FAILOVER_CODES.has(err.code)) {
            failures.push({ endpoint: node.label, code: err.code, message: err.message });
            continue;
          }
          throw err;
        }
        try {
          try {
            response = parseResponse(decodeTtlv(frame, { maxMessageSize: this.maxMessageSize }));
          } catch (err) {
            // Not a KMIP response: this node is broken, try the next.
            if (err instanceof KmipError) {
              failures.push({ endpoint: node.label, code: err.code, message: `${node.label}: ${err.message}` });
              continue;
            }
            throw err;
          }
          this.counters.requestsAnswered++;
          this.preferred = index;
          return parse(expectSuccess(response, operation, node.label));
        } finally {
          frame.fill(0);
        }
      }
    } finally {
      message.fill(0); // it may hold the password
    }
    // Every node-level message names its endpoint.
    const detail = failures.map((f) => `${f.message} [${f.code}]`).join('; ');
    if (failures.every((f) => f.code === 'ERR_KMIP_TLS')) {
      throw new KmipError('ERR_KMIP_TLS', `KMIP ${opName}: every KMS node refused the TLS session (check ca, cert and key): ${detail}`, {
        operation: opName,
        failures,
      });
    }
    throw new KmipError('ERR_KMS_UNAVAILABLE', `KMIP ${opName}: no KMS node answered (${failures.length} tried): ${detail}`, { operation: opName, failures });
  }

  /** One request on one node: pooled connection, resent once if a reused connection turns out stale. */
  private async exchange(node: Node, message: Buffer): Promise<Buffer> {
    for (let attempt = 0; ; attempt++) {
      const conn = await this.acquire(node);
      const reused = conn.completed > 0;
      try {
        const frame = await conn.request(message, this.timeoutMs);
        this.release(node, conn);
        return frame;
      } catch (err) {
        this.release(node, conn);
        const stale = reused && conn.failedBeforeAnswer && err instanceof KmipError && err.code === 'ERR_KMIP_CLOSED';
        if (stale && attempt === 0 && !this.closed) {
          this.counters.staleRetries++;
          // The other idle connections of this node are likely dropped too: retry on a fresh one.
          this.discardIdle(node);
          continue;
        }
        throw err;
      }
    }
  }

  private async acquire(node: Node): Promise<KmipConnection> {
    this.sweepIdle(node);
    for (;;) {
      if (this.closed) throw new KmipError('ERR_KMIP_CLOSED', 'KmipClient was closed');
      const conn = node.idle.pop();
      if (conn) {
        if (conn.isOpen && Date.now() - conn.lastUsed <= this.idleTimeoutMs) return conn;
        conn.close();
        node.all.delete(conn);
        node.count--;
        continue;
      }
      if (node.count < this.maxConnectionsPerNode) {
        node.count++;
        try {
          const fresh = await KmipConnection.connect({
            host: node.endpoint.host,
            port: node.endpoint.port,
            ...(node.endpoint.servername !== undefined && { servername: node.endpoint.servername }),
            ...this.tlsIdentity,
            timeoutMs: this.timeoutMs,
            maxMessageSize: this.maxMessageSize,
          });
          this.counters.connectionsOpened++;
          node.all.add(fresh);
          if (this.closed) {
            fresh.close();
            node.count--;
            throw new KmipError('ERR_KMIP_CLOSED', 'KmipClient was closed');
          }
          return fresh;
        } catch (err) {
          if (!(err instanceof KmipError && err.code === 'ERR_KMIP_CLOSED' && this.closed)) node.count--;
          this.wakeOne(node);
          throw err;
        }
      }
      // Pool full: wait for a connection to come back (bounded by the timeout).
      const handed = await new Promise<KmipConnection | undefined>((resolve, reject) => {
        const timer = setTimeout(() => {
          const i = node.waiters.indexOf(waiter);
          if (i >= 0) node.waiters.splice(i, 1);
          reject(new KmipError('ERR_KMIP_TIMEOUT', `no connection to ${node.label} became free within ${this.timeoutMs} ms`, { endpoint: node.label }));
        }, this.timeoutMs);
        const waiter = (c: KmipConnection | undefined): void => {
          clearTimeout(timer);
          resolve(c);
        };
        node.waiters.push(waiter);
      });
      if (handed && handed.isOpen) return handed;
      if (handed) {
        node.all.delete(handed);
        node.count--;
      }
    }
  }

  private release(node: Node, conn: KmipConnection): void {
    if (!conn.isOpen || this.closed) node.all.delete(conn);
    if (!conn.isOpen || this.closed) {
      if (!conn.isOpen) node.count--;
      else conn.close();
      this.wakeOne(node);
      return;
    }
    const waiter = node.waiters.shift();
    if (waiter) waiter(conn);
    else node.idle.push(conn);
  }

  /** Close idle connections that are closed or idle for too long (the pool is LIFO: old ones sink). */
  private sweepIdle(node: Node): void {
    const now = Date.now();
    for (let i = node.idle.length - 1; i >= 0; i--) {
      const conn = node.idle[i]!;
      if (conn.isOpen && now - conn.lastUsed <= this.idleTimeoutMs) continue;
      node.idle.splice(i, 1);
      conn.close();
      node.all.delete(conn);
      node.count--;
    }
  }

  private discardIdle(node: Node): void {
    for (const conn of node.idle.splice(0)) {
      conn.close();
      node.all.delete(conn);
      node.count--;
    }
  }

  /** Let one waiter retry (a slot was freed). */
  private wakeOne(node: Node): void {
    const waiter = node.waiters.shift();
    if (waiter) waiter(undefined);
  }

  /** Close every connection; later calls fail with ERR_KMIP_CLOSED. Idempotent. */
  async close(): Promise<void> {
    this.closed = true;
    for (const node of this.nodes) {
      node.idle.length = 0;
      for (const conn of node.all) conn.close();
      node.all.clear();
      node.count = 0;
      for (const waiter of node.waiters.splice(0)) waiter(undefined);
    }
  }
}
