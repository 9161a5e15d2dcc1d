// A fieldvault client in Node.js, loaded from ../../proto at run time with
// @grpc/proto-loader (no generated files).
//
// Tokenizes a mixed batch as `orders` (a phone number, an email address, a
// structured postal address, a national ID and one invalid phone number),
// reads the per-item error with its google.rpc.BadRequest detail, then
// detokenizes the tokens as `support` for purpose `callback` and checks what
// the dev policy reveals. Exits non-zero if anything differs from what is
// expected.
//
//     node example.js [--addr HOST:PORT] [--data-dir DIR]
//
// The certificates are the dev ones `fieldvault serve --dev` writes under
// DATA_DIR/dev/: ca.pem, and NAME.pem / NAME.key for each caller.
'use strict';

const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { parseArgs } = require('node:util');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const PROTO_DIR = path.resolve(__dirname, '..', '..', 'proto');
// Every call gives up after this long; so does waiting for the connection.
const DEADLINE_MS = 10_000;

const PHONE = '+1 202-555-0142';
const EMAIL = 'jane.doe@example.com';
const ADDRESS = {
  country: 'US',
  region: 'ZZ',
  city: 'Springfield',
  street_lines: ['1 Example Way'],
  postal_code: '00000',
  recipient: 'Test Person',
};
const NATIONAL_ID = '078-05-1120';
const BAD_PHONE = '+1 202-555-01'; // too short: fails alone, the batch goes on

// The service, from the proto files in this repository.
const vaultPackage = grpc.loadPackageDefinition(
  protoLoader.loadSync('fieldvault/v1/vault.proto', {
    includeDirs: [PROTO_DIR],
    keepCase: true,
    enums: String,
    longs: String,
    defaults: true,
    oneofs: true,
  }),
).fieldvault.v1;

// The error detail types, from the vendored google/rpc/error_details.proto:
// a google.rpc.Status carries them as google.protobuf.Any, whose `value`
// arrives as a Buffer until decoded with the right type.
const errorDetails = new protobuf.Root();
errorDetails.resolvePath = (_origin, target) => path.join(PROTO_DIR, target);
errorDetails.loadSync('google/rpc/error_details.proto', { keepCase: true });
const BadRequest = errorDetails.lookupType('google.rpc.BadRequest');

function badRequest(status) {
  const detail = status.details.find(
    (d) => d.type_url === 'type.googleapis.com/google.rpc.BadRequest',
  );
  assert.ok(detail, `no BadRequest detail in ${JSON.stringify(status)}`);
  return BadRequest.toObject(BadRequest.decode(detail.value), { defaults: true });
}

function deadline() {
  return new Date(Date.now() + DEADLINE_MS);
}

// A client as `caller` over mTLS, with the dev CA as the only trust root.
async function connect(addr, devDir, caller) {
  const credentials = grpc.credentials.createSsl(
    fs.readFileSync(path.join(devDir, 'ca.pem')),
    fs.readFileSync(path.join(devDir, `${caller}.key`)),
    fs.readFileSync(path.join(devDir, `${caller}.pem`)),
  );
  const client = new vaultPackage.Vault(addr, credentials);
  await new Promise((resolve, reject) =>
    client.waitForReady(deadline(), (err) =>
      err ? reject(new Error(`no connection to ${addr} as ${caller}: ${err.message}`)) : resolve(),
    ),
  );
  return client;
}

function call(client, method, request) {
  return new Promise((resolve, reject) =>
    client[method](request, { deadline: deadline() }, (err, response) =>
      err ? reject(err) : resolve(response),
    ),
  );
}

async function tokenize(orders) {
  const response = await call(orders, 'Tokenize', {
    fields: [
      { kind: 'FIELD_KIND_PHONE', value: PHONE },
      { kind: 'FIELD_KIND_EMAIL', value: EMAIL },
      { kind: 'FIELD_KIND_ADDRESS', address: ADDRESS },
      { kind: 'FIELD_KIND_NATIONAL_ID', value: NATIONAL_ID, scheme: 'NATIONAL_ID_SCHEME_US_SSN' },
      { kind: 'FIELD_KIND_PHONE', value: BAD_PHONE },
    ],
  });
  const results = response.results;
  assert.equal(results.length, 5, 'one result per field');

  const tokens = results.slice(0, 4).map((result, i) => {
    assert.equal(result.outcome, 'token', `fields[${i}]: ${JSON.stringify(result.error)}`);
    assert.match(result.token, /^fv1_[A-Za-z0-9_-]+$/, `fields[${i}] token`);
    console.log(`fields[${i}]: ${result.token}`);
    return result.token;
  });

  // The invalid value: a google.rpc.Status naming the field, with a
  // google.rpc.BadRequest detail.
  const bad = results[4];
  assert.equal(bad.outcome, 'error');
  assert.equal(bad.error.code, grpc.status.INVALID_ARGUMENT);
  const violations = badRequest(bad.error).field_violations;
  assert.equal(violations.length, 1);
  assert.equal(violations[0].field, 'fields[4].value');
  assert.ok(violations[0].description, 'the violation has a description');
  assert.ok(!bad.error.message.includes('202'), 'the error does not echo the value');
  console.log(`fields[4]: INVALID_ARGUMENT ${violations[0].field}: ${violations[0].description}`);
  return tokens;
}

async function detokenize(support, tokens) {
  const response = await call(support, 'Detokenize', {
    tokens,
    purpose: 'callback',
    justification: 'EXAMPLE-1',
  });
  const results = response.results;
  assert.deepEqual(
    results.map((r) => r.token),
    tokens,
    'one result per token, in order',
  );
  const [phone, email, address, nationalId] = results;

  assert.equal(phone.outcome, 'revealed', JSON.stringify(phone.error));
  assert.equal(phone.revealed.reveal, 'REVEAL_FULL');
  assert.equal(phone.revealed.value, '+12025550142');

  assert.equal(email.outcome, 'revealed', JSON.stringify(email.error));
  assert.equal(email.revealed.reveal, 'REVEAL_MASKED');
  assert.equal(email.revealed.value, 'j***@example.com');

  // A masked structured address keeps country, region and city only.
  assert.equal(address.outcome, 'revealed', JSON.stringify(address.error));
  assert.equal(address.revealed.reveal, 'REVEAL_MASKED');
  assert.equal(address.revealed.value, 'Springfield, ZZ, US');
  assert.deepEqual(address.revealed.address, {
    country: 'US',
    region: 'ZZ',
    city: 'Springfield',
    district: '',
    street_lines: [],
    postal_code: '',
    recipient: '',
  });

  // The dev policy gives support no rule for national IDs: such a token is
  // answered exactly like one that does not exist.
  assert.equal(nationalId.outcome, 'error');
  assert.equal(nationalId.error.code, grpc.status.NOT_FOUND);

  for (const [name, result] of [['phone', phone], ['email', email], ['address', address]]) {
    console.log(`${name}: ${result.revealed.value}`);
  }
  console.log(`national ID: NOT_FOUND ${nationalId.error.message}`);
}

async function main() {
  const { values } = parseArgs({
    options: {
      addr: { type: 'string', default: process.env.FIELDVAULT_ADDR || '127.0.0.1:50051' },
      'data-dir': {
        type: 'string',
        default: process.env.FIELDVAULT_DATA_DIR || 'fieldvault-data',
      },
    },
  });
  const devDir = path.join(values['data-dir'], 'dev');

  const orders = await connect(values.addr, devDir, 'orders');
  let tokens;
  try {
    tokens = await tokenize(orders);
  } finally {
    orders.close();
  }
  const support = await connect(values.addr, devDir, 'support');
  try {
    await detokenize(support, tokens);
  } finally {
    support.close();
  }
  console.log('node example: all results as expected');
}

main().catch((err) => {
  if (err instanceof assert.AssertionError) {
    console.error(`example: unexpected result: ${err.message}`);
  } else if (typeof err.code === 'number') {
    console.error(`example: call failed: ${grpc.status[err.code]}: ${err.details}`);
  } else if (err.code === 'ENOENT') {
    console.error(`example: ${err.message} (--data-dir names the data dir of serve --dev)`);
  } else {
    console.error(`example: ${err.message}`);
  }
  process.exitCode = 1;
});
