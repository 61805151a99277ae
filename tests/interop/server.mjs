// An oidc-provider authorization server and a protected resource for the client-auth interop
// tests (tests/interop.rs). Test-only: it mints grants without a browser and exposes counters.
//
//   node server.mjs [--access-token-ttl SECONDS] [--clock-tolerance SECONDS]
//   (or INTEROP_AT_TTL / INTEROP_CLOCK_TOLERANCE; defaults 2 and 1)
//
// It listens on two loopback ports chosen by the OS:
// - the provider (issuer http://127.0.0.1:P): POST /token, POST /token/revocation, and the
//   test routes POST /test/mint, /test/revoke-access, /test/revoke-grant, GET /test/counters;
// - the protected resource (http://127.0.0.1:R/api/...): 200 for an access token the provider
//   finds valid (AccessToken.find / ClientCredentials.find), else 401 with
//   `WWW-Authenticate: Bearer error="invalid_token"`;
// - a DPoP resource (http://127.0.0.1:R/dpop-api/...) that checks DPoP proofs (RFC 9449) itself:
//   signature with the header's jwk, typ, ES256, htm, htu, iat, ath, the token's `jkt` against the
//   jwk's thumbprint, a nonce of its own (401 `use_dpop_nonce` with a `DPoP-Nonce`) and jti
//   replay (401 `invalid_dpop_proof`); /dpop-api/always-invalid-proof always answers
//   `invalid_dpop_proof`;
// - http://127.0.0.1:R/.well-known/openid-configuration: the provider's metadata, served from
//   another origin than the issuer it names (a mix-up for discovery tests).
// The DPoP clients (`dpop_clients`) must send proofs with a nonce at the token endpoint, which
// answers `400 use_dpop_nonce` to a proof without one. The `client_secret_jwt` clients
// (`secret_jwt_clients`) sign HS256 assertions with their secret. The `private_key_jwt` clients
// (`jwt_clients`) authenticate with the ES256 or RS256 key pair generated at start, whose
// private keys (PKCS#8 PEM) are in `client_keys`.
// When both listen it prints ONE JSON line on stdout, then runs until its stdin closes.
//
// oidc-provider stores `exp` in whole seconds (floor(now) + ttl), so a token may expire up to
// one second before `expires_in` says; the default clock tolerance of 1 s makes every token valid
// for at least its advertised lifetime.

import crypto from 'node:crypto';
import http from 'node:http';
import { calculateJwkThumbprint, EmbeddedJWK, jwtVerify } from 'jose';
import { Provider } from 'oidc-provider';

function option(flag, env, fallback) {
  const i = process.argv.indexOf(flag);
  if (i !== -1 && process.argv[i + 1] !== undefined) return Number(process.argv[i + 1]);
  if (process.env[env] !== undefined) return Number(process.env[env]);
  return fallback;
}

const accessTokenTtl = option('--access-token-ttl', 'INTEROP_AT_TTL', 2);
const clockTolerance = option('--clock-tolerance', 'INTEROP_CLOCK_TOLERANCE', 1);
const SCOPE = 'openid offline_access';

const clients = ['interop-tower', 'interop-reqwest', 'interop-extra'].map((id) => ({
  client_id: id,
  client_secret: `${id}-secret-${Math.random().toString(36).slice(2)}`,
}));
// DPoP-bound clients (client_secret_basic); the token endpoint demands a nonce from them.
const dpopClients = ['interop-dpop-tower', 'interop-dpop-reqwest'].map((id) => ({
  client_id: id,
  client_secret: `${id}-secret-${Math.random().toString(36).slice(2)}`,
}));
const dpopClientIds = new Set(dpopClients.map(({ client_id }) => client_id));
// client_secret_jwt clients (HS256 assertions signed with a secret of 64 characters).
const secretJwtClients = ['interop-sjwt-tower', 'interop-sjwt-reqwest'].map((id) => ({
  client_id: id,
  client_secret: crypto.randomBytes(32).toString('hex'),
}));
// private_key_jwt clients, each registered with the public halves of both key pairs below.
const jwtClients = ['interop-pkjwt-tower', 'interop-pkjwt-reqwest'].map((id) => ({
  client_id: id,
}));

function clientKey(type, options, kid, alg) {
  const { publicKey, privateKey } = crypto.generateKeyPairSync(type, options);
  return {
    kid,
    alg,
    jwk: { ...publicKey.export({ format: 'jwk' }), kid, alg, use: 'sig' },
    pem: privateKey.export({ type: 'pkcs8', format: 'pem' }),
  };
}
const clientKeys = [
  clientKey('ec', { namedCurve: 'P-256' }, 'interop-es256', 'ES256'),
  clientKey('rsa', { modulusLength: 2048 }, 'interop-rs256', 'RS256'),
];

// ----- storage: an unbounded Map (the bundled memory adapter is an LRU of 1000 entries) -----

const store = new Map(); // key -> { payload, expiresAt }
const grantMembers = new Map(); // grantId -> Set of keys
// Opaque token value (= id) -> client id, for tokens destroyed by revocation, so that the
// resource's 401 for such a token still counts against the client that owned it.
const revokedOwner = new Map();

function forget(key) {
  const entry = store.get(key);
  if (entry && entry.payload.clientId) {
    revokedOwner.set(key.slice(key.indexOf(':') + 1), entry.payload.clientId);
  }
  store.delete(key);
}

function live(key) {
  const entry = store.get(key);
  if (!entry) return undefined;
  if (entry.expiresAt !== undefined && entry.expiresAt <= Date.now()) {
    store.delete(key);
    return undefined;
  }
  return entry.payload;
}

class MapAdapter {
  constructor(model) {
    this.model = model;
  }

  key(id) {
    return `${this.model}:${id}`;
  }

  async upsert(id, payload, expiresIn) {
    const key = this.key(id);
    const expiresAt = typeof expiresIn === 'number'
      ? Date.now() + (expiresIn + clockTolerance + 60) * 1000
      : undefined;
    store.set(key, { payload, expiresAt });
    if (payload.grantId) {
      if (!grantMembers.has(payload.grantId)) grantMembers.set(payload.grantId, new Set());
      grantMembers.get(payload.grantId).add(key);
    }
  }

  async find(id) {
    return live(this.key(id));
  }

  async findByUid(uid) {
    for (const [key, { payload }] of store) {
      if (key.startsWith(`${this.model}:`) && payload.uid === uid) return payload;
    }
    return undefined;
  }

  async findByUserCode(userCode) {
    for (const [key, { payload }] of store) {
      if (key.startsWith(`${this.model}:`) && payload.userCode === userCode) return payload;
    }
    return undefined;
  }

  async consume(id) {
    const payload = live(this.key(id));
    if (payload) payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) {
    forget(this.key(id));
  }

  async revokeByGrantId(grantId) {
    const members = grantMembers.get(grantId);
    if (!members) return;
    for (const key of [...members]) {
      if (key.startsWith(`${this.model}:`)) {
        forget(key);
        members.delete(key);
      }
    }
  }
}

// ----- counters, per client id -----

const counters = new Map();

function countersFor(clientId) {
  if (!counters.has(clientId)) {
    counters.set(clientId, {
      token_requests: 0,
      in_flight: 0,
      max_in_flight: 0,
      max_token_ms: 0,
      refresh_successes: 0,
      client_credentials_successes: 0,
      // Token requests that carried a DPoP proof, and the token types issued.
      dpop_proofs: 0,
      token_types: {},
      errors: {},
      resource: {},
      // The DPoP resource: answers by reason ('200', 'use_dpop_nonce', 'invalid_dpop_proof',
      // 'invalid_token'), requests by path, and the last request it accepted (its
      // Authorization and DPoP headers, and the proof key's thumbprint).
      dpop_resource: {},
      dpop_paths: {},
      dpop_last: null,
    });
  }
  return counters.get(clientId);
}

function basicClientId(header) {
  if (!header || !/^basic /i.test(header)) return 'unknown';
  try {
    const decoded = Buffer.from(header.slice(6).trim(), 'base64').toString('utf8');
    const id = decoded.slice(0, decoded.indexOf(':'));
    return decodeURIComponent(id.replace(/\+/g, ' '));
  } catch {
    return 'unknown';
  }
}

// ----- the provider -----

const providerServer = http.createServer();
await new Promise((resolve) => { providerServer.listen(0, '127.0.0.1', 65535, resolve); });
const providerPort = providerServer.address().port;
const issuer = `http://127.0.0.1:${providerPort}`;

const clientDefaults = {
  grant_types: ['authorization_code', 'refresh_token', 'client_credentials'],
  response_types: ['code'],
  redirect_uris: ['https://client.example.com/callback'],
};

const provider = new Provider(issuer, {
  adapter: MapAdapter,
  clients: [
    ...clients.map(({ client_id, client_secret }) => ({
      ...clientDefaults,
      client_id,
      client_secret,
      token_endpoint_auth_method: 'client_secret_basic',
    })),
    ...dpopClients.map(({ client_id, client_secret }) => ({
      ...clientDefaults,
      client_id,
      client_secret,
      token_endpoint_auth_method: 'client_secret_basic',
      dpop_bound_access_tokens: true,
    })),
    ...secretJwtClients.map(({ client_id, client_secret }) => ({
      ...clientDefaults,
      client_id,
      client_secret,
      token_endpoint_auth_method: 'client_secret_jwt',
    })),
    ...jwtClients.map(({ client_id }) => ({
      ...clientDefaults,
      client_id,
      token_endpoint_auth_method: 'private_key_jwt',
      jwks: { keys: clientKeys.map(({ jwk }) => jwk) },
    })),
  ],
  clockTolerance,
  features: {
    clientCredentials: { enabled: true },
    revocation: { enabled: true },
    introspection: { enabled: true },
    devInteractions: { enabled: false },
    dPoP: {
      enabled: true,
      nonceSecret: crypto.randomBytes(32),
      // Only the DPoP clients' token requests need a nonce (the client is known by then).
      requireNonce: (ctx) => dpopClientIds.has(ctx.oidc?.client?.clientId),
    },
  },
  rotateRefreshToken: true,
  findAccount: async (_ctx, sub) => ({ accountId: sub, claims: async () => ({ sub }) }),
  ttl: {
    AccessToken: accessTokenTtl,
    ClientCredentials: accessTokenTtl,
    RefreshToken: 3600,
    Grant: 3600,
    Session: 3600,
    Interaction: 3600,
    IdToken: 3600,
    AuthorizationCode: 60,
  },
});
provider.proxy = false;

async function readJson(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const text = Buffer.concat(chunks).toString('utf8');
  return text ? JSON.parse(text) : {};
}

function grantIdOf(payload) {
  return payload && payload.grantId;
}

// Test routes and token-endpoint counters, in front of the provider's own routes.
provider.use(async (ctx, next) => {
  if (ctx.path === '/token' && ctx.method === 'POST') {
    // A client authenticating in the body (a client assertion) is known only once the provider
    // has read it: its request is counted afterwards, without the in-flight figures.
    const basicId = basicClientId(ctx.get('authorization'));
    let c = basicId === 'unknown' ? undefined : countersFor(basicId);
    if (c) {
      c.token_requests += 1;
      c.in_flight += 1;
      c.max_in_flight = Math.max(c.max_in_flight, c.in_flight);
    }
    const started = Date.now();
    try {
      await next();
    } finally {
      if (c) {
        c.in_flight -= 1;
      } else {
        c = countersFor(ctx.oidc?.client?.clientId || ctx.oidc?.params?.client_id || 'unknown');
        c.token_requests += 1;
      }
      c.max_token_ms = Math.max(c.max_token_ms, Date.now() - started);
    }
    if (ctx.get('dpop')) c.dpop_proofs += 1;
    if (ctx.status === 200 && ctx.body && ctx.body.token_type) {
      c.token_types[ctx.body.token_type] = (c.token_types[ctx.body.token_type] || 0) + 1;
    }
    const grantType = ctx.oidc?.params?.grant_type;
    if (ctx.status === 200 && grantType === 'refresh_token') c.refresh_successes += 1;
    if (ctx.status === 200 && grantType === 'client_credentials') c.client_credentials_successes += 1;
    if (ctx.status >= 400) {
      const code = (ctx.body && ctx.body.error) || `http_${ctx.status}`;
      c.errors[code] = (c.errors[code] || 0) + 1;
    }
    return;
  }
  if (!ctx.path.startsWith('/test/')) {
    await next();
    return;
  }
  ctx.type = 'application/json';
  if (ctx.path === '/test/counters' && ctx.method === 'GET') {
    ctx.body = Object.fromEntries(counters);
    return;
  }
  if (ctx.method !== 'POST') {
    ctx.status = 405;
    ctx.body = { error: 'method_not_allowed' };
    return;
  }
  const body = await readJson(ctx.req);
  if (ctx.path === '/test/mint') {
    // A grant as if the user had signed in through the authorization-code flow.
    const client = await provider.Client.find(body.client_id);
    if (!client) {
      ctx.status = 400;
      ctx.body = { error: 'unknown client' };
      return;
    }
    const accountId = body.sub || 'alice';
    const grant = new provider.Grant({ accountId, clientId: client.clientId });
    grant.addOIDCScope(SCOPE);
    const grantId = await grant.save();
    const common = {
      accountId,
      client,
      grantId,
      scope: SCOPE,
      gty: 'authorization_code',
      expiresWithSession: false,
      // A DPoP-bound grant, as if the code had been exchanged with a proof of this key
      // (RFC 7638 thumbprint): its refresh token takes only proofs of the same key.
      ...(body.jkt ? { jkt: body.jkt } : {}),
    };
    const refreshToken = await new provider.RefreshToken({
      ...common,
      iiat: Math.floor(Date.now() / 1000),
      rotations: 0,
    }).save();
    const accessToken = await new provider.AccessToken(common).save();
    ctx.body = {
      access_token: accessToken,
      refresh_token: refreshToken,
      expires_in: accessTokenTtl,
      token_type: body.jkt ? 'DPoP' : 'Bearer',
      grant_id: grantId,
    };
    return;
  }
  if (ctx.path === '/test/rotate-resource-nonce') {
    resourceNonce = newNonce();
    ctx.body = { rotated: true };
    return;
  }
  if (ctx.path === '/test/revoke-access') {
    const token = await provider.AccessToken.find(body.access_token, { ignoreExpiration: true })
      || await provider.ClientCredentials.find(body.access_token, { ignoreExpiration: true });
    if (token) await token.destroy();
    ctx.body = { revoked: Boolean(token) };
    return;
  }
  if (ctx.path === '/test/revoke-grant') {
    // By any token of the grant (access or refresh, current or rotated).
    const value = body.token;
    const found = await provider.RefreshToken.find(value, { ignoreExpiration: true })
      || await provider.AccessToken.find(value, { ignoreExpiration: true });
    const grantId = grantIdOf(found);
    if (grantId) {
      await Promise.all([
        provider.AccessToken.revokeByGrantId(grantId),
        provider.RefreshToken.revokeByGrantId(grantId),
        provider.Grant.adapter.destroy(grantId),
      ]);
    }
    ctx.body = { revoked: Boolean(grantId) };
    return;
  }
  ctx.status = 404;
  ctx.body = { error: 'not_found' };
});

providerServer.on('request', provider.callback());

// ----- the protected resources -----

let resourceOrigin; // set once the resource server listens

function newNonce() {
  return crypto.randomBytes(16).toString('base64url');
}

// The DPoP resource's nonce (one at a time; /test/rotate-resource-nonce replaces it) and the
// jti of every well-formed proof it was sent, until its iat has left the window.
let resourceNonce = newNonce();
const DPOP_IAT_WINDOW = 60;
const seenJtis = new Map(); // jti -> forget after (ms)

function jtiSeen(jti) {
  const now = Date.now();
  for (const [seen, until] of seenJtis) if (until <= now) seenJtis.delete(seen);
  if (seenJtis.has(jti)) return true;
  seenJtis.set(jti, now + 2 * DPOP_IAT_WINDOW * 1000);
  return false;
}

async function findToken(value, options) {
  return value
    && (await provider.AccessToken.find(value, options)
      || await provider.ClientCredentials.find(value, options));
}

// /dpop-api/...: an access token presented as `Authorization: DPoP <token>` with a proof.
async function dpopResource(req, path, answer) {
  const header = req.headers.authorization || '';
  const match = /^dpop (.+)$/i.exec(header);
  const value = match && match[1].trim();
  const token = await findToken(value, {});
  const owner = token || await findToken(value, { ignoreExpiration: true });
  const c = countersFor((owner && owner.clientId) || revokedOwner.get(value) || 'unknown');
  c.dpop_paths[path] = (c.dpop_paths[path] || 0) + 1;
  const reject = (reason, headers = {}) => {
    c.dpop_resource[reason] = (c.dpop_resource[reason] || 0) + 1;
    answer(401, { ok: false, error: reason }, {
      'www-authenticate': `DPoP error="${reason}", algs="ES256"`,
      ...headers,
    });
  };
  if (!value) return reject('invalid_token');
  if (path === '/dpop-api/always-invalid-proof') return reject('invalid_dpop_proof');
  const proofs = req.headersDistinct.dpop || [];
  if (proofs.length !== 1) return reject('invalid_dpop_proof');
  const proof = proofs[0];
  let verified;
  try {
    verified = await jwtVerify(proof, EmbeddedJWK, { typ: 'dpop+jwt', algorithms: ['ES256'] });
  } catch {
    return reject('invalid_dpop_proof');
  }
  const { payload, protectedHeader } = verified;
  const now = Math.floor(Date.now() / 1000);
  const ath = crypto.createHash('sha256').update(value).digest('base64url');
  const valid = protectedHeader.alg === 'ES256'
    && protectedHeader.jwk && protectedHeader.jwk.d === undefined
    && typeof payload.jti === 'string' && payload.jti.length > 0
    && payload.htm === req.method
    && payload.htu === `${resourceOrigin}${path}`
    && typeof payload.iat === 'number' && Math.abs(now - payload.iat) <= DPOP_IAT_WINDOW
    && payload.ath === ath;
  if (!valid) return reject('invalid_dpop_proof');
  // Every well-formed proof's jti counts, a nonce challenge's too: a retry needs a new proof.
  if (jtiSeen(payload.jti)) return reject('invalid_dpop_proof');
  if (payload.nonce !== resourceNonce) {
    return reject('use_dpop_nonce', { 'dpop-nonce': resourceNonce });
  }
  if (!token || !token.jkt) return reject('invalid_token');
  const jkt = await calculateJwkThumbprint(protectedHeader.jwk);
  if (token.jkt !== jkt) return reject('invalid_dpop_proof');
  c.dpop_resource[200] = (c.dpop_resource[200] || 0) + 1;
  c.dpop_last = { authorization: header, dpop: proof, jkt, url: `${resourceOrigin}${req.url}` };
  return answer(200, { ok: true, sub: token.accountId || null, client_id: token.clientId, jkt });
}

const resourceServer = http.createServer(async (req, res) => {
  const answer = (status, body, headers = {}) => {
    res.writeHead(status, { 'content-type': 'application/json', ...headers });
    res.end(JSON.stringify(body));
  };
  try {
    for await (const _ of req) { /* drain */ }
    const path = new URL(req.url, 'http://resource.invalid').pathname;
    if (path === '/.well-known/openid-configuration' && req.method === 'GET') {
      const metadata = await fetch(`${issuer}/.well-known/openid-configuration`);
      answer(metadata.status, await metadata.json());
      return;
    }
    if (path.startsWith('/dpop-api/')) {
      await dpopResource(req, path, answer);
      return;
    }
    if (!req.url.startsWith('/api/')) {
      answer(404, { error: 'not_found' });
      return;
    }
    const header = req.headers.authorization || '';
    const match = /^bearer (.+)$/i.exec(header);
    const value = match && match[1].trim();
    const token = await findToken(value, {});
    // A rejected token counts against the client that owns it, when it is known at all.
    const owner = token || await findToken(value, { ignoreExpiration: true });
    const ownerId = owner ? owner.clientId : revokedOwner.get(value);
    const status = token ? 200 : 401;
    const c = countersFor(ownerId || 'unknown');
    c.resource[status] = (c.resource[status] || 0) + 1;
    if (!token) {
      answer(401, { ok: false, error: 'invalid_token' }, {
        'www-authenticate': value ? 'Bearer error="invalid_token"' : 'Bearer',
      });
      return;
    }
    answer(200, { ok: true, sub: token.accountId || null, client_id: token.clientId });
  } catch (err) {
    answer(500, { error: String(err) });
  }
});
resourceServer.keepAliveTimeout = 60_000;
providerServer.keepAliveTimeout = 60_000;
await new Promise((resolve) => { resourceServer.listen(0, '127.0.0.1', 65535, resolve); });
const resourcePort = resourceServer.address().port;
resourceOrigin = `http://127.0.0.1:${resourcePort}`;

process.stdout.write(`${JSON.stringify({
  issuer,
  token_endpoint: `${issuer}/token`,
  revocation_endpoint: `${issuer}/token/revocation`,
  control_url: `${issuer}/test`,
  resource_origin: resourceOrigin,
  resource_url: `${resourceOrigin}/api/resource`,
  dpop_resource_url: `${resourceOrigin}/dpop-api/resource`,
  provider_port: providerPort,
  resource_port: resourcePort,
  access_token_ttl: accessTokenTtl,
  clock_tolerance: clockTolerance,
  clients,
  dpop_clients: dpopClients,
  secret_jwt_clients: secretJwtClients,
  jwt_clients: jwtClients,
  client_keys: clientKeys.map(({ kid, alg, pem }) => ({ kid, alg, pem })),
})}\n`);

process.stdin.on('end', () => process.exit(0));
process.stdin.on('close', () => process.exit(0));
process.stdin.resume();
