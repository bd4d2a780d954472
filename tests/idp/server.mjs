// A strict OpenID provider for tokenmanager's integration tests: oidc-provider (pinned in
// package.json) on http://127.0.0.1:<port>, with refresh-token rotation on every use, reuse
// detection, JWT access tokens for RFC 8707 resources, client_credentials, RFC 8693 token
// exchange, RFC 7009 revocation, an unbounded in-memory store, and test-only control endpoints
// under /test/. See README.md.
//
//   node tests/idp/server.mjs [--port N] [--exit-with-stdin]
//
// Prints exactly one line, `test-idp listening <port>`, on stdout once it accepts requests.
// Everything else (warnings, errors) goes to stderr.

import * as crypto from 'node:crypto';
import * as http from 'node:http';
import process from 'node:process';

import Provider, { errors } from 'oidc-provider';
// Internal (the package has no "exports" map, the version is pinned): the provider's live
// configuration, whose `scopes` Set is extended at run time (see `scopes` below).
import instance from 'oidc-provider/lib/helpers/weak_cache.js';

// ---------------------------------------------------------------------------------------------
// Command line

function parseArgs(argv) {
  const opts = { port: 0, exitWithStdin: false };
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i];
    if (arg === '--port') {
      opts.port = Number(argv[(i += 1)]);
    } else if (arg.startsWith('--port=')) {
      opts.port = Number(arg.slice('--port='.length));
    } else if (arg === '--exit-with-stdin') {
      opts.exitWithStdin = true;
    } else {
      console.error(`test-idp: unknown argument ${arg}`);
      process.exit(2);
    }
  }
  if (!Number.isInteger(opts.port) || opts.port < 0 || opts.port > 65535) {
    console.error('test-idp: --port needs an integer 0..65535');
    process.exit(2);
  }
  return opts;
}

const opts = parseArgs(process.argv.slice(2));

// ---------------------------------------------------------------------------------------------
// Mutable test state (changed through /test/ endpoints)

const DAY = 24 * 60 * 60;

const settings = {
  accessTokenTtl: 3600, // AccessToken and ClientCredentials, seconds
  refreshTokenTtl: 14 * DAY, // each RefreshToken (a rotated one gets a fresh lifetime)
  latencyMs: 0, // delay before processing every token-endpoint request
  // Refreshes and client_credentials requests that name no resource are processed as if they
  // named this one (their access token is then a JWT with that aud); null: opaque tokens.
  defaultResource: null,
};

const RESOURCE_RE = /^https:\/\/[^\s#]+$/;
const SCOPE_TOKEN_RE = /^[\x21\x23-\x5B\x5D-\x7E]+$/;

function emptyStats() {
  return {
    token_requests: { refresh_token: {}, client_credentials: {}, token_exchange: {} },
    revocations: 0,
    refresh_errors: {},
    // Refreshes whose request named an audience or resource, by sub.
    refreshes_with_audience: {},
    // Token exchanges the IdP refused, by error code (invalid_target, invalid_grant...).
    exchange_errors: {},
    // Token exchanges whose subject token was resolved, by its format (opaque, jwt).
    exchange_subjects: {},
    // Extras, not in the original brief:
    injected_failures: 0, // requests answered by /test/fail instead of being processed
    dropped_replies: 0, // refreshes processed whose connection was then destroyed (/test/drop-reply)
    abandoned_holds: 0, // held refreshes whose client left before release (not processed)
    introspections: 0,
    discovery: 0, // GET /.well-known/openid-configuration
  };
}

let stats = emptyStats();

function bump(map, key, by = 1) {
  map[key] = (map[key] ?? 0) + by;
}

const failures = { count: 0, status: 500 };
// sub -> { waiters: Set of resolve functions, processAbandoned } (present = holding that sub)
const holds = new Map();
let heldCount = 0;
const dropReplies = new Map(); // sub -> number of next refreshes whose reply is dropped
const latestGrant = new Map(); // sub -> grantId of the newest grant minted by /test/grant
const strictGrants = new Set(); // grantIds minted with an explicit resource list (RFC 8707 binding)

// refresh token value -> { sub, grantId, clientId }. Filled by the adapter on every RefreshToken
// upsert and never emptied, so that a refresh can be attributed to its user even after the token
// was consumed or its grant revoked.
const refreshTokenOwners = new Map();

// ---------------------------------------------------------------------------------------------
// Unbounded in-memory adapter. oidc-provider's bundled MemoryAdapter is an LRU of 1000 entries
// that silently forgets tokens under load; this one keeps every entry until it expires (entries
// are dropped lazily when found expired). find() returns a copy, like a real database would.

const stores = new Map(); // model name -> Map(id -> { payload, expiresAt })
const grantMembers = new Map(); // grantId -> Map(model name -> Set(id))
const sessionUids = new Map(); // Session uid -> id
const userCodes = new Map(); // userCode -> id (DeviceCode)

class UnboundedMemoryAdapter {
  constructor(model) {
    this.model = model;
    if (!stores.has(model)) stores.set(model, new Map());
    this.store = stores.get(model);
  }

  entry(id) {
    const entry = this.store.get(id);
    if (!entry) return undefined;
    if (entry.expiresAt <= Date.now()) {
      this.remove(id, entry.payload);
      return undefined;
    }
    return entry;
  }

  remove(id, payload) {
    this.store.delete(id);
    if (payload?.grantId) {
      grantMembers.get(payload.grantId)?.get(this.model)?.delete(id);
    }
    if (payload?.uid && sessionUids.get(payload.uid) === id) sessionUids.delete(payload.uid);
    if (payload?.userCode && userCodes.get(payload.userCode) === id) userCodes.delete(payload.userCode);
  }

  async upsert(id, payload, expiresIn) {
    const previous = this.store.get(id);
    if (previous) this.remove(id, previous.payload);
    const expiresAt = typeof expiresIn === 'number' ? Date.now() + expiresIn * 1000 : Infinity;
    this.store.set(id, { payload: structuredClone(payload), expiresAt });
    if (payload.grantId) {
      if (!grantMembers.has(payload.grantId)) grantMembers.set(payload.grantId, new Map());
      const byModel = grantMembers.get(payload.grantId);
      if (!byModel.has(this.model)) byModel.set(this.model, new Set());
      byModel.get(this.model).add(id);
    }
    if (this.model === 'Session' && payload.uid) sessionUids.set(payload.uid, id);
    if (payload.userCode) userCodes.set(payload.userCode, id);
    if (this.model === 'RefreshToken') {
      refreshTokenOwners.set(id, {
        sub: payload.accountId,
        grantId: payload.grantId,
        clientId: payload.clientId,
      });
    }
  }

  async find(id) {
    const entry = this.entry(id);
    return entry ? structuredClone(entry.payload) : undefined;
  }

  async findByUid(uid) {
    const id = sessionUids.get(uid);
    return id === undefined ? undefined : this.find(id);
  }

  async findByUserCode(userCode) {
    const id = userCodes.get(userCode);
    return id === undefined ? undefined : this.find(id);
  }

  async consume(id) {
    const entry = this.entry(id);
    if (entry) entry.payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) {
    const entry = this.store.get(id);
    if (entry) this.remove(id, entry.payload);
    if (this.model === 'Grant') grantMembers.delete(id);
  }

  async revokeByGrantId(grantId) {
    const ids = grantMembers.get(grantId)?.get(this.model);
    if (!ids) return;
    for (const id of [...ids]) {
      const entry = this.store.get(id);
      this.remove(id, entry?.payload);
    }
    grantMembers.get(grantId)?.delete(this.model);
  }
}

// ---------------------------------------------------------------------------------------------
// Provider configuration

// Static scopes. oidc-provider copies this list into its configuration; the token gate and
// /test/grant add to that live copy (`liveScopes`) any other well-formed scope a request names, so
// arbitrary scopes such as `wlcg.groups:/dteam/user` are accepted. Without that, oidc-provider
// silently drops unknown scopes from a client_credentials request that has no resource.
const scopes = new Set([
  'openid', 'offline_access', 'profile', 'email',
  'wlcg', 'wlcg.groups', 'compute.read', 'compute.modify', 'compute.create', 'compute.cancel',
  'storage.read', 'storage.create', 'storage.modify', 'storage.stage', 'fts', 'scim:read',
]);

// RFC 8693.
const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';
const JWT_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:jwt';

const clientDefaults = {
  grant_types: ['refresh_token', 'client_credentials', TOKEN_EXCHANGE],
  response_types: [],
  redirect_uris: [],
};

const clients = [
  {
    ...clientDefaults,
    client_id: 'tm-basic',
    client_secret: 'tm-basic-secret',
    token_endpoint_auth_method: 'client_secret_basic',
  },
  {
    ...clientDefaults,
    client_id: 'tm-post',
    client_secret: 'tm-post-secret',
    token_endpoint_auth_method: 'client_secret_post',
  },
];

function isHttpsResource(resource) {
  return typeof resource === 'string' && RESOURCE_RE.test(resource) && URL.canParse(resource);
}

function openGrant(grantId) {
  return grantId !== undefined && !strictGrants.has(grantId);
}

const configuration = {
  adapter: UnboundedMemoryAdapter,
  clients,
  // No `jwks`: oidc-provider's built-in development RSA key signs (RS256; served at /jwks; it
  // warns about it on stderr). Generating a key here with crypto.generateKeyPairSync deadlocked
  // node 20.20 at start-up about once in fifteen runs (a GC finaliser of the key-generation job
  // waiting on a mutex), so the fixture generates none.
  cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
  findAccount: async (_ctx, sub) => ({
    accountId: sub,
    claims: async () => ({ sub, preferred_username: sub }),
  }),
  claims: {
    openid: ['sub'],
    profile: ['preferred_username'],
  },
  scopes,
  // Rotate on every use. Presenting a consumed refresh token then makes oidc-provider destroy it
  // and revoke the whole grant (its "reuse detection", unchanged here).
  rotateRefreshToken: () => true,
  ttl: {
    AccessToken: () => settings.accessTokenTtl,
    ClientCredentials: () => settings.accessTokenTtl,
    RefreshToken: () => settings.refreshTokenTtl,
    Grant: () => 10 * 365 * DAY,
    IdToken: () => 3600,
    AuthorizationCode: () => 60,
    Interaction: () => 3600,
    Session: () => 14 * DAY,
  },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    revocation: { enabled: true },
    introspection: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // No resource -> no default: an opaque access token (oidc-provider's default behaviour).
      defaultResource: async (_ctx, _client, oneOf) => oneOf,
      useGrantedResource: async () => false,
      // Any https:// URI is a resource server; it gets JWT access tokens whose aud is the resource.
      getResourceServerInfo: async (ctx, resource) => {
        if (!isHttpsResource(resource)) {
          throw new errors.InvalidTarget('test-idp accepts only https:// resource indicators');
        }
        const requested = ctx.oidc.params.scope;
        const fromRefreshToken = ctx.oidc.entities.RefreshToken?.scope;
        return {
          scope: requested || fromRefreshToken || '',
          audience: resource,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
};

// ---------------------------------------------------------------------------------------------
// HTTP helpers

function readRaw(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

async function readJson(ctx) {
  const raw = await readRaw(ctx.req);
  if (raw.length === 0) return {};
  try {
    return JSON.parse(raw.toString('utf8'));
  } catch {
    const e = new Error('request body is not JSON');
    e.status = 400;
    throw e;
  }
}

function sleep(ms) {
  return new Promise((resolve) => { setTimeout(resolve, ms); });
}

function clientIdOf(ctx, params) {
  const auth = ctx.get('authorization');
  if (auth && auth.toLowerCase().startsWith('basic ')) {
    const decoded = Buffer.from(auth.slice(6).trim(), 'base64').toString('utf8');
    const i = decoded.indexOf(':');
    try {
      return decodeURIComponent((i < 0 ? decoded : decoded.slice(0, i)).replace(/\+/g, ' '));
    } catch {
      return decoded.slice(0, i);
    }
  }
  return params.get('client_id') ?? '';
}

// Serialise the processing of refreshes per grant: oidc-provider reads a refresh token, awaits
// several steps, then consumes it, so two concurrent requests with the same token could both
// succeed. A strict IdP (with a database transaction) lets exactly one win; the other then
// presents a consumed token and trips reuse detection.
const grantLocks = new Map(); // grantId -> tail promise

async function lockGrant(grantId) {
  const previous = grantLocks.get(grantId) ?? Promise.resolve();
  let release;
  const mine = new Promise((resolve) => { release = resolve; });
  const tail = previous.then(() => mine);
  grantLocks.set(grantId, tail);
  await previous;
  return () => {
    release();
    if (grantLocks.get(grantId) === tail) grantLocks.delete(grantId);
  };
}

// ---------------------------------------------------------------------------------------------
// Server

const server = http.createServer();
server.keepAliveTimeout = 5000;
server.requestTimeout = 0; // held requests may wait for a long time

await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(opts.port, '127.0.0.1', resolve);
});

const { port } = server.address();
const issuer = `http://127.0.0.1:${port}`;
const provider = new Provider(issuer, configuration);
const liveScopes = instance(provider).configuration?.scopes;
if (!(liveScopes instanceof Set)) throw new Error('oidc-provider internals changed: configuration.scopes not found');

// Open grants (minted without an explicit resource list) accept any https:// resource on refresh:
// oidc-provider would otherwise insist that the resource was part of the original authorization
// (RFC 8707). This mimics IdPs (INDIGO IAM, Keycloak) that let any audience be requested on
// refresh. Grants minted with `resources` keep oidc-provider's strict binding.
{
  const rtProto = provider.RefreshToken.prototype;
  const base = Object.getOwnPropertyDescriptor(Object.getPrototypeOf(rtProto), 'resourceIndicators')
    ?? Object.getOwnPropertyDescriptor(Object.getPrototypeOf(Object.getPrototypeOf(rtProto)), 'resourceIndicators');
  if (!base?.get) throw new Error('oidc-provider internals changed: BaseToken#resourceIndicators not found');
  Object.defineProperty(rtProto, 'resourceIndicators', {
    configurable: true,
    get() {
      const granted = base.get.call(this);
      if (!openGrant(this.grantId)) return granted;
      return { has: (r) => granted.has(r) || isHttpsResource(r) };
    },
  });

  const grantProto = provider.Grant.prototype;
  const getResourceScope = grantProto.getResourceScope;
  if (typeof getResourceScope !== 'function') throw new Error('oidc-provider internals changed: Grant#getResourceScope not found');
  grantProto.getResourceScope = function openResourceScope(resource) {
    if (openGrant(this.jti) && !this.resources?.[resource] && isHttpsResource(resource)) {
      return this.getOIDCScope();
    }
    return getResourceScope.call(this, resource);
  };
}

// ---------------------------------------------------------------------------------------------
// RFC 8693 token exchange: an access token (the subject token) for one narrowed to an audience
// and a subset of its scopes. oidc-provider has no such grant; registerGrantType adds it.

// A JWT access token this provider signed: the claims if its signature (the provider's own keys),
// type, issuer and expiry hold; else undefined.
function verifiedJwtAccessToken(token) {
  const [header64, payload64, signature64, extra] = token.split('.');
  if (extra !== undefined || !signature64) return undefined;
  let header;
  let claims;
  try {
    header = JSON.parse(Buffer.from(header64, 'base64url').toString('utf8'));
    claims = JSON.parse(Buffer.from(payload64, 'base64url').toString('utf8'));
  } catch {
    return undefined;
  }
  if (header.alg !== 'RS256' || header.typ !== 'at+jwt') return undefined;
  const jwk = instance(provider).jwks?.keys?.find((k) => k.kid === header.kid && k.kty === 'RSA');
  if (!jwk) return undefined;
  const signed = crypto.verify(
    'sha256',
    Buffer.from(`${header64}.${payload64}`),
    crypto.createPublicKey({ key: jwk, format: 'jwk' }),
    Buffer.from(signature64, 'base64url'),
  );
  const now = Math.floor(Date.now() / 1000);
  if (!signed || claims.iss !== issuer || typeof claims.exp !== 'number' || claims.exp <= now) {
    return undefined;
  }
  return claims;
}

// Whose token the subject token is, and what it grants; undefined when it is unknown, expired or
// revoked (its grant gone). Opaque tokens are looked up, JWTs verified.
async function exchangeSubject(token) {
  if (token.includes('.')) {
    const claims = verifiedJwtAccessToken(token);
    if (!claims || typeof claims.sub !== 'string') return undefined;
    return { accountId: claims.sub, scope: claims.scope ?? '', grantId: undefined, format: 'jwt' };
  }
  const at = await provider.AccessToken.find(token);
  if (!at) return undefined;
  if (at.grantId && !(await provider.Grant.find(at.grantId))) return undefined;
  return { accountId: at.accountId, scope: at.scope ?? '', grantId: at.grantId, format: 'opaque' };
}

async function tokenExchange(ctx) {
  const { params, client } = ctx.oidc;
  if (!params.subject_token) throw new errors.InvalidRequest('missing required parameter subject_token');
  if (![ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE].includes(params.subject_token_type)) {
    throw new errors.InvalidRequest(`subject_token_type must be ${ACCESS_TOKEN_TYPE} or ${JWT_TOKEN_TYPE}`);
  }
  if (params.actor_token !== undefined || params.actor_token_type !== undefined) {
    throw new errors.InvalidRequest('actor tokens (delegation) are not supported');
  }
  if (params.requested_token_type !== undefined && params.requested_token_type !== ACCESS_TOKEN_TYPE) {
    throw new errors.InvalidRequest(`requested_token_type must be ${ACCESS_TOKEN_TYPE}`);
  }
  if (params.audience !== undefined && params.resource !== undefined && params.audience !== params.resource) {
    throw new errors.InvalidTarget('one audience at a time');
  }
  // The audiences a client may exchange for are the resources it may ask for anywhere here:
  // https:// URIs.
  const audience = params.audience ?? params.resource;
  if (audience !== undefined && !isHttpsResource(audience)) {
    throw new errors.InvalidTarget('audience not allowed for this client (test-idp exchanges for https:// audiences only)');
  }
  const subject = await exchangeSubject(params.subject_token);
  if (!subject) throw new errors.InvalidGrant('subject token is unknown, expired or revoked');
  bump(stats.exchange_subjects, subject.format);
  const granted = new Set(subject.scope.split(' ').filter(Boolean));
  const requested = params.scope ? params.scope.split(' ').filter(Boolean) : [...granted];
  const beyond = requested.filter((s) => !granted.has(s));
  if (beyond.length > 0) {
    throw new errors.InvalidScope('requested scope exceeds the subject token\'s', beyond.join(' '));
  }
  const scope = requested.join(' ');
  const at = new provider.AccessToken({
    accountId: subject.accountId,
    client,
    grantId: subject.grantId,
    gty: 'token_exchange',
    scope,
  });
  if (audience !== undefined) {
    at.resourceServer = new provider.ResourceServer(audience, {
      scope,
      audience,
      accessTokenFormat: 'jwt',
      jwt: { sign: { alg: 'RS256' } },
    });
  }
  ctx.oidc.entity('AccessToken', at);
  const accessToken = await at.save();
  ctx.body = {
    access_token: accessToken,
    issued_token_type: ACCESS_TOKEN_TYPE,
    token_type: at.tokenType,
    expires_in: at.expiration,
    ...(scope ? { scope } : {}),
  };
}

provider.registerGrantType(TOKEN_EXCHANGE, tokenExchange, [
  'subject_token', 'subject_token_type', 'actor_token', 'actor_token_type',
  'requested_token_type', 'audience', 'resource', 'scope',
]);

function json(ctx, status, body) {
  ctx.status = status;
  ctx.type = 'application/json';
  ctx.body = JSON.stringify(body);
}

async function mintGrant(body) {
  const sub = body.sub;
  const scope = body.scope ?? 'openid offline_access';
  const clientId = body.client_id ?? 'tm-basic';
  if (typeof sub !== 'string' || sub.length === 0) throw Object.assign(new Error('sub is required'), { status: 400 });
  if (typeof scope !== 'string' || !scope.split(' ').every((s) => SCOPE_TOKEN_RE.test(s))) {
    throw Object.assign(new Error('scope is not a valid scope string'), { status: 400 });
  }
  let resources;
  if (body.resources !== undefined) {
    resources = Array.isArray(body.resources) ? body.resources : [body.resources];
    if (!resources.every(isHttpsResource)) throw Object.assign(new Error('resources must be https:// URIs'), { status: 400 });
  }
  const client = await provider.Client.find(clientId);
  if (!client) throw Object.assign(new Error(`unknown client ${clientId}`), { status: 400 });
  for (const s of scope.split(' ')) liveScopes.add(s);

  const now = Math.floor(Date.now() / 1000);
  const grant = new provider.Grant({ accountId: sub, clientId });
  grant.addOIDCScope(scope);
  for (const r of resources ?? []) grant.addResourceScope(r, scope);
  const grantId = await grant.save();
  if (resources) strictGrants.add(grantId);

  const rt = new provider.RefreshToken({
    accountId: sub,
    client,
    grantId,
    scope,
    gty: 'authorization_code',
    authTime: now,
    iiat: now,
    expiresWithSession: false,
    ...(resources ? { resource: resources.length === 1 ? resources[0] : resources } : {}),
  });
  const refreshToken = await rt.save();

  const at = new provider.AccessToken({
    accountId: sub,
    client,
    grantId,
    scope,
    gty: 'authorization_code',
  });
  const accessToken = await at.save();
  latestGrant.set(sub, grantId);
  return {
    refresh_token: refreshToken,
    access_token: accessToken,
    expires_in: at.expiration,
    token_type: 'Bearer',
    scope,
    grant_id: grantId,
  };
}

async function handleTest(ctx) {
  const route = `${ctx.method} ${ctx.path}`;
  switch (route) {
    case 'POST /test/grant':
      return json(ctx, 200, await mintGrant(await readJson(ctx)));
    case 'GET /test/stats':
      return json(ctx, 200, stats);
    case 'POST /test/reset-stats':
      stats = emptyStats();
      return json(ctx, 200, { ok: true });
    case 'POST /test/fail': {
      const body = await readJson(ctx);
      failures.count = Number(body.count ?? 1);
      failures.status = Number(body.status ?? 500);
      return json(ctx, 200, { ok: true });
    }
    case 'POST /test/hold': {
      const { sub, process_abandoned: processAbandoned } = await readJson(ctx);
      if (holds.has(sub)) {
        holds.get(sub).processAbandoned = !!processAbandoned;
      } else {
        holds.set(sub, { waiters: new Set(), processAbandoned: !!processAbandoned });
      }
      return json(ctx, 200, { ok: true });
    }
    case 'POST /test/release': {
      const { sub } = await readJson(ctx);
      const waiters = [...(holds.get(sub)?.waiters ?? [])];
      holds.delete(sub);
      for (const resolve of waiters) resolve(true);
      return json(ctx, 200, { ok: true, released: waiters.length });
    }
    case 'GET /test/held':
      return json(ctx, 200, { held: heldCount });
    case 'POST /test/drop-reply': {
      const { sub, count } = await readJson(ctx);
      dropReplies.set(sub, (dropReplies.get(sub) ?? 0) + Number(count ?? 1));
      return json(ctx, 200, { ok: true });
    }
    case 'POST /test/latency': {
      const { ms } = await readJson(ctx);
      settings.latencyMs = Math.max(0, Number(ms ?? 0));
      return json(ctx, 200, { ok: true });
    }
    case 'POST /test/ttl': {
      const body = await readJson(ctx);
      if (body.access_token !== undefined) settings.accessTokenTtl = Number(body.access_token);
      if (body.refresh_token !== undefined) settings.refreshTokenTtl = Number(body.refresh_token);
      return json(ctx, 200, { access_token: settings.accessTokenTtl, refresh_token: settings.refreshTokenTtl });
    }
    case 'POST /test/default-resource': {
      const { resource } = await readJson(ctx);
      if (resource !== null && !isHttpsResource(resource)) {
        throw Object.assign(new Error('resource must be an https:// URI or null'), { status: 400 });
      }
      settings.defaultResource = resource;
      return json(ctx, 200, { resource });
    }
    case 'GET /test/grant-status': {
      const sub = ctx.query.sub;
      const grantId = latestGrant.get(sub);
      const grant = grantId ? await provider.Grant.find(grantId) : undefined;
      return json(ctx, 200, { alive: !!grant, grant_id: grantId ?? null });
    }
    default:
      return json(ctx, 404, { error: 'not_found', error_description: `no test endpoint ${route}` });
  }
}

// Reads a form body ahead of oidc-provider, whose body parser then falls back to req.body (it
// prints a one-time warning about it on stderr).
async function readForm(ctx) {
  if (!ctx.is('application/x-www-form-urlencoded')) return new URLSearchParams();
  const raw = await readRaw(ctx.req);
  ctx.req.body = raw.toString('utf8');
  return new URLSearchParams(ctx.req.body);
}

// oidc-provider accepts client_secret_basic and client_secret_post interchangeably for any client
// with a secret. A strict IdP (Spring Authorization Server, INDIGO IAM) accepts only the
// registered method, so the fixture enforces it: tm-basic must use the Authorization header,
// tm-post the body. Answered as oidc-provider answers a failed client authentication.
const registeredAuthMethod = new Map(clients.map((c) => [c.client_id, c.token_endpoint_auth_method]));

function wrongAuthMethod(ctx, params) {
  const basic = /^basic\s/i.test(ctx.get('authorization'));
  const post = params.has('client_secret');
  const expected = registeredAuthMethod.get(clientIdOf(ctx, params));
  if (basic && post) return false; // oidc-provider rejects this itself
  return (expected === 'client_secret_basic' && post) || (expected === 'client_secret_post' && basic);
}

function rejectAuthMethod(ctx) {
  json(ctx, 401, { error: 'invalid_client', error_description: 'client authentication failed' });
  ctx.set('WWW-Authenticate', 'Basic realm="test-idp"');
}

async function otherGate(ctx, next) {
  const params = await readForm(ctx);
  if (wrongAuthMethod(ctx, params)) {
    rejectAuthMethod(ctx);
    return;
  }
  await next();
}

async function tokenGate(ctx, next) {
  const params = await readForm(ctx);
  const grantType = params.get('grant_type') ?? '';

  let sub;
  let grantId;
  if (grantType === 'refresh_token') {
    const owner = refreshTokenOwners.get(params.get('refresh_token') ?? '');
    sub = owner?.sub ?? '<unknown>';
    grantId = owner?.grantId;
    bump(stats.token_requests.refresh_token, sub);
    if (params.has('resource') || params.has('audience')) bump(stats.refreshes_with_audience, sub);
  } else if (grantType === TOKEN_EXCHANGE) {
    const audience = params.get('audience') ?? params.get('resource') ?? '';
    bump(stats.token_requests.token_exchange, `${clientIdOf(ctx, params)} ${audience} ${params.get('scope') ?? ''}`);
  } else if (grantType === 'client_credentials') {
    const key = `${clientIdOf(ctx, params)} ${params.get('scope') ?? ''} ${params.getAll('resource').join(' ')}`;
    bump(stats.token_requests.client_credentials, key);
    for (const s of (params.get('scope') ?? '').split(' ')) {
      if (SCOPE_TOKEN_RE.test(s)) liveScopes.add(s);
    }
  } else {
    stats.token_requests[grantType] ??= {};
    bump(stats.token_requests[grantType], clientIdOf(ctx, params));
  }

  if (settings.latencyMs > 0) await sleep(settings.latencyMs);

  if (failures.count > 0) {
    failures.count -= 1;
    stats.injected_failures += 1;
    json(ctx, failures.status, { error: 'server_error', error_description: 'test-idp injected failure' });
    return;
  }

  if (sub !== undefined && holds.has(sub)) {
    // Held until /test/release. A client that gives up meanwhile (closes the connection) takes
    // its request back: it is never processed and the refresh token is not consumed, unless
    // the hold was set with process_abandoned (then it is processed on release, reply lost).
    const hold = holds.get(sub);
    heldCount += 1;
    const proceed = await new Promise((resolve) => {
      const waiter = (value) => {
        if (hold.waiters.delete(waiter)) {
          heldCount -= 1;
          resolve(value);
        }
      };
      hold.waiters.add(waiter);
      ctx.res.once('close', () => {
        if (!hold.processAbandoned) waiter(false);
      });
    });
    if (!proceed) {
      stats.abandoned_holds += 1;
      ctx.respond = false;
      return;
    }
  }

  let drop = false;
  if (sub !== undefined && (dropReplies.get(sub) ?? 0) > 0) {
    drop = true;
    dropReplies.set(sub, dropReplies.get(sub) - 1);
  }

  if (settings.defaultResource && ['refresh_token', 'client_credentials'].includes(grantType)
      && !params.has('resource')) {
    params.set('resource', settings.defaultResource);
    ctx.req.body = params.toString();
  }

  const unlock = grantId ? await lockGrant(grantId) : undefined;
  try {
    if (wrongAuthMethod(ctx, params)) {
      rejectAuthMethod(ctx);
    } else {
      await next();
    }
  } finally {
    unlock?.();
  }

  if (sub !== undefined && ctx.status >= 400) bump(stats.refresh_errors, sub);
  if (grantType === TOKEN_EXCHANGE && ctx.status >= 400) {
    let error = 'unknown';
    try {
      error = JSON.parse(ctx.body).error ?? error;
    } catch {
      error = ctx.body?.error ?? error;
    }
    bump(stats.exchange_errors, error);
  }
  if (drop) {
    stats.dropped_replies += 1;
    ctx.respond = false;
    ctx.req.socket.destroy();
  }
}

provider.use(async (ctx, next) => {
  if (ctx.path.startsWith('/test/')) {
    try {
      await handleTest(ctx);
    } catch (err) {
      json(ctx, err.status ?? 500, { error: 'test_endpoint_error', error_description: String(err.message ?? err) });
    }
    return;
  }
  if (ctx.method === 'POST' && ctx.path === '/token') {
    await tokenGate(ctx, next);
    return;
  }
  if (ctx.method === 'POST' && ctx.path === '/token/revocation') {
    stats.revocations += 1;
    await otherGate(ctx, next);
    return;
  }
  if (ctx.method === 'POST' && ctx.path === '/token/introspection') {
    stats.introspections += 1;
    await otherGate(ctx, next);
    return;
  }
  if (ctx.method === 'GET' && ctx.path === '/.well-known/openid-configuration') stats.discovery += 1;
  await next();
});

provider.on('server_error', (_ctx, err) => { console.error('test-idp server_error:', err); });

server.on('request', provider.callback());
process.stdout.write(`test-idp listening ${port}\n`);

function shutdown() {
  server.close();
  server.closeAllConnections?.();
  process.exit(0);
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
if (opts.exitWithStdin) {
  process.stdin.on('end', shutdown);
  process.stdin.on('close', shutdown);
  process.stdin.resume();
}
