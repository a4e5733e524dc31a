// panva/oidc-provider configured to do the same work as Keycard, for bench/ only:
// - client credentials and the code flow with JWT access tokens (RFC 9068) signed with the
//   client's algorithm (one client per algorithm, RS256 or ES256, as Keycard's id_token_alg);
// - the code flow: PKCE S256, a login and consent completed without a page (GET
//   /interaction/:uid answers at once for the bench account), codes bound to the session
//   (checked at exchange, as Keycard checks it), refresh tokens rotated on every use;
// - introspection of opaque tokens (it keeps no record of JWT access tokens);
// - storage in this process's memory (BenchAdapter below).
// Usage: node server.mjs PORT
import { generateKeyPairSync, randomBytes } from 'node:crypto';

import Provider from 'oidc-provider';

const port = Number(process.argv[2] || 4000);
const issuer = `http://127.0.0.1:${port}`;

// Resource indicators: the JWT one is what tokens are measured with; oidc-provider keeps no
// record of JWT access tokens, so introspection of access tokens is measured on opaque ones.
const JWT_RESOURCE = 'https://api.bench.test/jwt';
const OPAQUE_RESOURCE = 'https://api.bench.test/opaque';
const RP_CALLBACK = 'http://127.0.0.1:9/cb'; // bench/ops.py: never contacted
const ALGS = ['RS256', 'ES256'];
const ACCOUNT = 'alice';
// What Keycard releases for the bench's person (profile, email, groups, roles scopes).
const PERSON = {
  name: 'Alice Example',
  preferred_username: 'alice',
  picture: 'https://avatars.example.test/u/1001',
  email: 'alice@acme.example',
  email_verified: true,
  groups: ['acme', 'acme/engineering', 'acme/platform'],
  roles: ['admin'],
};

const jwk = (key, kid, alg) => ({ ...key.export({ format: 'jwk' }), kid, alg, use: 'sig' });
const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;

// The development adapter bundled with oidc-provider is an LRU of 1 000 entries (a pool of
// codes would be evicted) that rescans a grant's whole token list on every write (refresh
// rotation would grow quadratic): this one is a plain Map with expiry and a Set per grant.
const store = new Map(); // key -> { value, expiry }
const grants = new Map(); // grantId -> Set of keys
const GRANTABLE = new Set(['AccessToken', 'AuthorizationCode', 'RefreshToken', 'DeviceCode',
  'BackchannelAuthenticationRequest']);

function read(key) {
  const entry = store.get(key);
  if (entry === undefined) return undefined;
  if (entry.expiry !== undefined && entry.expiry <= Date.now()) {
    store.delete(key);
    return undefined;
  }
  return entry.value;
}

class BenchAdapter {
  constructor(model) {
    this.model = model;
  }

  key(id) {
    return `${this.model}:${id}`;
  }

  async upsert(id, payload, expiresIn) {
    const key = this.key(id);
    const expiry = typeof expiresIn === 'number' ? Date.now() + expiresIn * 1000 : undefined;
    if (this.model === 'Session') store.set(`sessionUid:${payload.uid}`, { value: id, expiry });
    if (GRANTABLE.has(this.model) && payload.grantId) {
      if (!grants.has(payload.grantId)) grants.set(payload.grantId, new Set());
      grants.get(payload.grantId).add(key);
    }
    store.set(key, { value: payload, expiry });
  }

  async find(id) {
    return read(this.key(id));
  }

  async findByUid(uid) {
    const id = read(`sessionUid:${uid}`);
    return id === undefined ? undefined : this.find(id);
  }

  async findByUserCode() {
    return undefined;
  }

  async consume(id) {
    const payload = read(this.key(id));
    if (payload) payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) {
    store.delete(this.key(id));
  }

  async revokeByGrantId(grantId) {
    for (const key of grants.get(grantId) ?? []) store.delete(key);
    grants.delete(grantId);
  }
}

const services = ALGS.map((alg) => ({
  client_id: `bench-service-${alg}`,
  client_secret: 'bench-service-secret-0123456789abcdef',
  grant_types: ['client_credentials'],
  redirect_uris: [],
  response_types: [],
  id_token_signed_response_alg: alg, // here: the algorithm of its JWT access tokens
  token_endpoint_auth_method: 'client_secret_basic',
}));
const rps = ALGS.map((alg) => ({
  client_id: `bench-rp-${alg}`,
  client_secret: 'bench-rp-secret-0123456789abcdef',
  grant_types: ['authorization_code', 'refresh_token'],
  redirect_uris: [RP_CALLBACK],
  response_types: ['code'],
  id_token_signed_response_alg: alg, // ID token and JWT access tokens
  token_endpoint_auth_method: 'client_secret_basic',
}));

const provider = new Provider(issuer, {
  adapter: BenchAdapter,
  clients: [...services, ...rps],
  jwks: { keys: [jwk(rsa, 'bench-rs256', 'RS256'), jwk(ec, 'bench-es256', 'ES256')] },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  scopes: ['openid', 'offline_access', 'profile', 'email', 'groups', 'roles', 'api'],
  claims: {
    openid: ['sub'],
    profile: ['name', 'preferred_username', 'picture'],
    email: ['email', 'email_verified'],
    groups: ['groups'],
    roles: ['roles'],
  },
  findAccount: (ctx, sub) => (sub === ACCOUNT
    ? { accountId: sub, claims: () => ({ sub, ...PERSON }) }
    : undefined),
  // Keycard puts the person's claims (and a service's roles) into its JWT access tokens.
  extraTokenClaims: (ctx, token) => (token.accountId
    ? { ...PERSON, auth_time: Math.floor(Date.now() / 1000) }
    : { roles: ['bench'] }),
  // Keycard's defaults: access tokens 10 minutes, codes 1 minute, refresh tokens 14 days idle.
  ttl: {
    AccessToken: 600, ClientCredentials: 600, AuthorizationCode: 60, IdToken: 600,
    RefreshToken: 14 * 86400, Grant: 90 * 86400, Session: 14 * 86400, Interaction: 600,
  },
  pkce: { required: () => true },
  rotateRefreshToken: true, // Keycard rotates on every use (RFC 9700 §4.14.2)
  // oidc-provider keeps offline_access only with prompt=consent (OIDC Core §11), which would
  // send every code through the consent interaction; Keycard's trusted RP gets refresh tokens
  // without it, so the peer's RP does too.
  issueRefreshToken: (ctx, client) => client.grantTypeAllowed('refresh_token'),
  // Codes are bound to the session like Keycard's (a signed-out session's code is refused);
  // oidc-provider's refresh tokens inherit that binding (one more in-memory lookup per use).
  expiresWithSession: () => true,
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: {
      enabled: true,
      // like Keycard (SECURITY 26): a client learns only about its own tokens
      allowedPolicy: (ctx, client, token) => token.clientId === client.clientId,
    },
    resourceIndicators: {
      enabled: true,
      defaultResource: (ctx, client, oneOf) => oneOf ?? JWT_RESOURCE,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource, client) => (resource === OPAQUE_RESOURCE
        ? { scope: 'api', audience: resource, accessTokenFormat: 'opaque' }
        : {
          scope: 'api',
          audience: resource,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: client.idTokenSignedResponseAlg } },
        }),
    },
  },
});
provider.on('server_error', (ctx, err) => console.error('server_error', err));

// The login and consent pages, answered at once: the bench account signs in and grants
// everything asked (Keycard's bench RP is trusted: no consent page either).
provider.use(async (ctx, next) => {
  if (ctx.method !== 'GET' || !ctx.path.startsWith('/interaction/')) return next();
  const { params } = await provider.interactionDetails(ctx.req, ctx.res);
  const grant = new provider.Grant({ accountId: ACCOUNT, clientId: params.client_id });
  grant.addOIDCScope(params.scope);
  grant.addResourceScope(params.resource ?? JWT_RESOURCE, 'api');
  const grantId = await grant.save();
  const returnTo = await provider.interactionResult(ctx.req, ctx.res, {
    login: { accountId: ACCOUNT }, consent: { grantId },
  }, { mergeWithLastSubmission: false });
  ctx.status = 303;
  ctx.redirect(returnTo);
  return undefined;
});

provider.listen(port, '127.0.0.1', () => console.log(`oidc-provider listening on ${issuer}`));
