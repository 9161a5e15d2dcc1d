"""A fieldvault client in Python, generated from ../../proto (generate.py).

Tokenizes a mixed batch as `orders` (a phone number, an email address, a
structured postal address, a national ID and one invalid phone number),
reads the per-item error with its google.rpc.BadRequest detail, then
detokenizes the tokens as `support` for purpose `callback` and checks what
the dev policy reveals. Exits non-zero if anything differs from what is
expected.

    python example.py [--addr HOST:PORT] [--data-dir DIR]

The certificates are the dev ones `fieldvault serve --dev` writes under
DATA_DIR/dev/: ca.pem, and NAME.pem / NAME.key for each caller.
"""

import argparse
import os
import sys
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent / "gen"))

from fieldvault.v1 import vault_pb2, vault_pb2_grpc  # noqa: E402
from google.rpc import error_details_pb2  # noqa: E402

# Every call gives up after this long; so does waiting for the connection.
DEADLINE_SECS = 10.0

PHONE = "+1 202-555-0142"
EMAIL = "jane.doe@example.com"
ADDRESS = vault_pb2.PostalAddress(
    country="US",
    region="ZZ",
    city="Springfield",
    street_lines=["1 Example Way"],
    postal_code="00000",
    recipient="Test Person",
)
NATIONAL_ID = "078-05-1120"
BAD_PHONE = "+1 202-555-01"  # too short: fails alone, the batch goes on


class Mismatch(Exception):
    pass


def expect(what, got, want):
    if got != want:
        raise Mismatch(f"{what}: got {got!r}, want {want!r}")


def connect(addr: str, dev_dir: Path, caller: str) -> grpc.Channel:
    """An mTLS channel as `caller`, with the dev CA as the only trust root."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(dev_dir / "ca.pem").read_bytes(),
        private_key=(dev_dir / f"{caller}.key").read_bytes(),
        certificate_chain=(dev_dir / f"{caller}.pem").read_bytes(),
    )
    channel = grpc.secure_channel(addr, credentials)
    grpc.channel_ready_future(channel).result(timeout=DEADLINE_SECS)
    return channel


def bad_request(status) -> error_details_pb2.BadRequest:
    """The google.rpc.BadRequest among a google.rpc.Status's details."""
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            found = error_details_pb2.BadRequest()
            detail.Unpack(found)
            return found
    raise Mismatch(f"no BadRequest detail in {status}")


def tokenize(vault: vault_pb2_grpc.VaultStub) -> list:
    Kind = vault_pb2.FieldKind
    request = vault_pb2.TokenizeRequest(
        fields=[
            vault_pb2.Field(kind=Kind.FIELD_KIND_PHONE, value=PHONE),
            vault_pb2.Field(kind=Kind.FIELD_KIND_EMAIL, value=EMAIL),
            vault_pb2.Field(kind=Kind.FIELD_KIND_ADDRESS, address=ADDRESS),
            vault_pb2.Field(
                kind=Kind.FIELD_KIND_NATIONAL_ID,
                value=NATIONAL_ID,
                scheme=vault_pb2.NationalIdScheme.NATIONAL_ID_SCHEME_US_SSN,
            ),
            vault_pb2.Field(kind=Kind.FIELD_KIND_PHONE, value=BAD_PHONE),
        ]
    )
    response = vault.Tokenize(request, timeout=DEADLINE_SECS)
    results = list(response.results)
    expect("tokenize results", len(results), 5)

    tokens = []
    for i, result in enumerate(results[:4]):
        expect(f"fields[{i}] outcome", result.WhichOneof("outcome"), "token")
        if not result.token.startswith("fv1_"):
            raise Mismatch(f"fields[{i}]: unexpected token {result.token!r}")
        tokens.append(result.token)
        print(f"fields[{i}]: {result.token}")

    # The invalid value: a google.rpc.Status naming the field, with a
    # google.rpc.BadRequest detail decoded from its google.protobuf.Any.
    bad = results[4]
    expect("fields[4] outcome", bad.WhichOneof("outcome"), "error")
    expect("fields[4] code", bad.error.code, grpc.StatusCode.INVALID_ARGUMENT.value[0])
    violations = bad_request(bad.error).field_violations
    expect("fields[4] violations", len(violations), 1)
    expect("fields[4] violation field", violations[0].field, "fields[4].value")
    if not violations[0].description:
        raise Mismatch("fields[4]: the violation has no description")
    if "202" in bad.error.message or "202" in violations[0].description:
        raise Mismatch("fields[4]: the error echoes the value")
    print(f"fields[4]: INVALID_ARGUMENT {violations[0].field}: {violations[0].description}")
    return tokens


def detokenize(vault: vault_pb2_grpc.VaultStub, tokens: list) -> None:
    request = vault_pb2.DetokenizeRequest(
        tokens=tokens, purpose="callback", justification="EXAMPLE-1"
    )
    response = vault.Detokenize(request, timeout=DEADLINE_SECS)
    results = list(response.results)
    expect("detokenize results", len(results), 4)
    for i, result in enumerate(results):
        expect(f"tokens[{i}] token", result.token, tokens[i])
    Reveal = vault_pb2.Reveal

    phone, email, address, national_id = results
    expect("phone outcome", phone.WhichOneof("outcome"), "revealed")
    expect("phone reveal", phone.revealed.reveal, Reveal.REVEAL_FULL)
    expect("phone value", phone.revealed.value, "+12025550142")

    expect("email outcome", email.WhichOneof("outcome"), "revealed")
    expect("email reveal", email.revealed.reveal, Reveal.REVEAL_MASKED)
    expect("email value", email.revealed.value, "j***@example.com")

    # A masked structured address keeps country, region and city only.
    expect("address outcome", address.WhichOneof("outcome"), "revealed")
    expect("address reveal", address.revealed.reveal, Reveal.REVEAL_MASKED)
    expect("address value", address.revealed.value, "Springfield, ZZ, US")
    expect(
        "address parts",
        address.revealed.address,
        vault_pb2.PostalAddress(country="US", region="ZZ", city="Springfield"),
    )

    # The dev policy gives support no rule for national IDs: such a token is
    # answered exactly like one that does not exist.
    expect("national ID outcome", national_id.WhichOneof("outcome"), "error")
    expect("national ID code", national_id.error.code, grpc.StatusCode.NOT_FOUND.value[0])

    for name, result in zip(["phone", "email", "address"], results):
        print(f"{name}: {result.revealed.value}")
    print(f"national ID: NOT_FOUND {national_id.error.message}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", default=os.environ.get("FIELDVAULT_ADDR", "127.0.0.1:50051"))
    parser.add_argument(
        "--data-dir", default=os.environ.get("FIELDVAULT_DATA_DIR", "fieldvault-data")
    )
    args = parser.parse_args()
    dev_dir = Path(args.data_dir) / "dev"
    try:
        with connect(args.addr, dev_dir, "orders") as orders:
            tokens = tokenize(vault_pb2_grpc.VaultStub(orders))
        with connect(args.addr, dev_dir, "support") as support:
            detokenize(vault_pb2_grpc.VaultStub(support), tokens)
    except grpc.FutureTimeoutError:
        print(f"example: no connection to {args.addr} within {DEADLINE_SECS} s", file=sys.stderr)
        return 1
    except grpc.RpcError as e:
        print(f"example: call failed: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    except FileNotFoundError as e:
        print(f"example: {e} (--data-dir names the data dir of serve --dev)", file=sys.stderr)
        return 1
    except Mismatch as e:
        print(f"example: unexpected result: {e}", file=sys.stderr)
        return 1
    print("python example: all results as expected")
    return 0


if __name__ == "__main__":
    sys.exit(main())
