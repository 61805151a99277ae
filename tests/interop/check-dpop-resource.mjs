// Proves that the DPoP resource of server.mjs refuses what it must, so that its 200s in the
// interop tests mean something: for a DPoP-bound token of a DPoP client, one proof per defect
// (RFC 9449 §4.3, §7.1, §9), each expecting its own answer. Test-only.
//
//   INTEROP_INFO='<server.mjs ready line>' node check-dpop-resource.mjs
//
// Prints one line per case and exits 1 when any answer differs from the expected one.

import crypto from 'node:crypto';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';

const info = JSON.parse(process.env.INTEROP_INFO);
const client = info.dpop_clients[0];
const url = info.dpop_resource_url;
const now = () => Math.floor(Date.now() / 1000);

async function keyPair(alg) {
  const { publicKey, privateKey } = await generateKeyPair(alg);
  return { privateKey, jwk: await exportJWK(publicKey), alg };
}
const bound = await keyPair('ES256');
const other = await keyPair('ES256');
const p384 = await keyPair('ES384');

async function proof(claims, { signer = bound, jwk = signer.jwk, typ = 'dpop+jwt' } = {}) {
  return new SignJWT({ jti: crypto.randomUUID(), iat: now(), ...claims })
    .setProtectedHeader({ alg: signer.alg, typ, jwk })
    .sign(signer.privateKey);
}

// A DPoP-bound token: the token endpoint asks for its nonce first.
async function tokenRequest(nonce) {
  const basic = Buffer.from(`${client.client_id}:${client.client_secret}`).toString('base64');
  return fetch(info.token_endpoint, {
    method: 'POST',
    headers: {
      authorization: `Basic ${basic}`,
      'content-type': 'application/x-www-form-urlencoded',
      dpop: await proof({ htm: 'POST', htu: info.token_endpoint, ...(nonce ? { nonce } : {}) }),
    },
    body: 'grant_type=client_credentials',
  });
}
const challenge = await tokenRequest();
const issued = await (await tokenRequest(challenge.headers.get('dpop-nonce'))).json();
if (issued.token_type !== 'DPoP') throw new Error(`no DPoP-bound token: ${JSON.stringify(issued)}`);
const token = issued.access_token;
const ath = crypto.createHash('sha256').update(token).digest('base64url');

async function call(dpop, { scheme = 'DPoP', target = url } = {}) {
  const headers = { authorization: `${scheme} ${token}` };
  if (dpop) headers.dpop = dpop;
  const res = await fetch(target, { headers });
  await res.arrayBuffer();
  const error = /error="([^"]+)"/.exec(res.headers.get('www-authenticate') || '');
  return { answer: res.status === 200 ? 'ok' : (error ? error[1] : String(res.status)), res };
}

const claims = { htm: 'GET', htu: url, ath };
const first = await call(await proof(claims));
const nonce = first.res.headers.get('dpop-nonce');
const good = { ...claims, nonce };
const accepted = await proof(good);

// Each case: a proof (or none), with the request's scheme and URL when they differ.
const cases = [
  ['a good proof', { dpop: accepted }, 'ok'],
  ['the same proof again (jti replay)', { dpop: accepted }, 'invalid_dpop_proof'],
  ['a wrong nonce', { dpop: await proof({ ...good, nonce: 'stale' }) }, 'use_dpop_nonce'],
  ['no proof', {}, 'invalid_dpop_proof'],
  ['the Bearer scheme', { dpop: await proof(good), scheme: 'Bearer' }, 'invalid_token'],
  ['another htm', { dpop: await proof({ ...good, htm: 'POST' }) }, 'invalid_dpop_proof'],
  ['another htu', { dpop: await proof({ ...good, htu: `${url}x` }) }, 'invalid_dpop_proof'],
  [
    'an htu with the query',
    { dpop: await proof({ ...good, htu: `${url}?a=1` }), target: `${url}?a=1` },
    'invalid_dpop_proof',
  ],
  ['a URL with a query, htu without', { dpop: await proof(good), target: `${url}?a=1` }, 'ok'],
  ['an iat 2 minutes old', { dpop: await proof({ ...good, iat: now() - 120 }) }, 'invalid_dpop_proof'],
  ['an iat 2 minutes ahead', { dpop: await proof({ ...good, iat: now() + 120 }) }, 'invalid_dpop_proof'],
  ['another ath', { dpop: await proof({ ...good, ath: `x${ath.slice(1)}` }) }, 'invalid_dpop_proof'],
  ['no ath', { dpop: await proof({ ...good, ath: undefined }) }, 'invalid_dpop_proof'],
  ['typ JWT', { dpop: await proof(good, { typ: 'JWT' }) }, 'invalid_dpop_proof'],
  ['ES384', { dpop: await proof(good, { signer: p384 }) }, 'invalid_dpop_proof'],
  [
    'another key than the token is bound to',
    { dpop: await proof(good, { signer: other }) },
    'invalid_dpop_proof',
  ],
  [
    'signed by another key than its jwk',
    { dpop: await proof(good, { signer: other, jwk: bound.jwk }) },
    'invalid_dpop_proof',
  ],
];

const report = (name, answer, expected) => {
  const ok = answer === expected;
  process.stdout.write(`${ok ? 'ok  ' : 'FAIL'} ${name}: ${answer}${ok ? '' : ` (expected ${expected})`}\n`);
  return ok;
};
let failed = report('no nonce', first.answer, 'use_dpop_nonce') ? 0 : 1;
for (const [name, { dpop, ...options }, expected] of cases) {
  const { answer } = await call(dpop, options);
  if (!report(name, answer, expected)) failed += 1;
}
process.exit(failed ? 1 : 0);
