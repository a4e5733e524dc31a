// panva/oidc-provider configured like Keycard's machine-to-machine path, for bench/ only:
// client credentials with RS256 JWT access tokens (RFC 9068), introspection, the in-memory
// adapter, one RSA-2048 signing key made at start. Usage: node server.mjs PORT
import { generateKeyPairSync, randomBytes } from 'node:crypto';

import Provider from 'oidc-provider';

const port = Number(process.argv[2] || 4000);
const issuer = `http://127.0.0.1:${port}`;

// Resource indicators: the JWT one is what client credentials are measured with; oidc-provider
// keeps no record of JWT access tokens, so introspection is measured on opaque ones.
const JWT_RESOURCE = 'https://api.bench.test/jwt';
const OPAQUE_RESOURCE = 'https://api.bench.test/opaque';

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: 'bench-rs256', alg: 'RS256', use: 'sig' };

const provider = new Provider(issuer, {
  clients: [{
    client_id: 'bench-service',
    client_secret: 'bench-service-secret-0123456789abcdef',
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
    token_endpoint_auth_method: 'client_secret_basic',
    introspection_endpoint_auth_method: 'client_secret_basic',
  }],
  jwks: { keys: [signingKey] },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  scopes: ['api'],
  ttl: { ClientCredentials: 600 }, // Keycard's default access_token_ttl
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
      defaultResource: () => JWT_RESOURCE,
      getResourceServerInfo: (ctx, resource) => (resource === OPAQUE_RESOURCE
        ? { scope: 'api', audience: resource, accessTokenFormat: 'opaque' }
        : { scope: 'api', audience: resource, accessTokenFormat: 'jwt', jwt: { sign: { alg: 'RS256' } } }),
    },
  },
});
provider.on('server_error', (ctx, err) => console.error('server_error', err));

provider.listen(port, '127.0.0.1', () => console.log(`oidc-provider listening on ${issuer}`));
