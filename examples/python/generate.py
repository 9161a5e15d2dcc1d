"""Generates the client code from ../../proto into gen/ with grpcio-tools.

Only the proto files in this repository are used (plus the protobuf
well-known types that grpcio-tools ships): fieldvault/v1/vault.proto and the
google/rpc/status.proto and google/rpc/error_details.proto vendored beside it.
"""

import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

HERE = Path(__file__).resolve().parent
PROTO = HERE.parent.parent / "proto"
GEN = HERE / "gen"
FILES = [
    "fieldvault/v1/vault.proto",
    "google/rpc/status.proto",
    "google/rpc/error_details.proto",
]


def main() -> int:
    GEN.mkdir(exist_ok=True)
    well_known = resources.files("grpc_tools") / "_proto"
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO}",
            f"-I{well_known}",
            f"--python_out={GEN}",
            f"--pyi_out={GEN}",
            f"--grpc_python_out={GEN}",
            *FILES,
        ]
    )
    if status != 0:
        print(f"protoc failed with status {status}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
