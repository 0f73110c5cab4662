#!/usr/bin/env bash
# Generates internal/pbwire/gen: the Go types (protoc-gen-go) and the
# reflection-free size, marshal and unmarshal code (protoc-gen-go-vtproto) of
# the KurrentDB messages in shared.proto, persistent.proto and streams.proto,
# from the .proto files that the client module in go.mod ships.
#
# The messages are generated into packages of ditto's own, under a proto
# package prefixed with ditto.wire., so that they do not clash in the
# protobuf registry with the client's generated types of the same names. The
# wire format carries field numbers and types, never package names, so the
# bytes are those of the client's messages. status.proto (google.rpc) is not
# generated: its messages are those of google.golang.org/genproto, as in the
# client.
#
# Usage: bash internal/pbwire/generate.sh [OUTDIR]   (default: internal/pbwire/gen)
# Needs protoc (Debian: protobuf-compiler, libprotobuf-dev) and the Go toolchain; the plugins
# are built at the versions pinned below.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/gen}

protoc_gen_go=google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.11
protoc_gen_vtproto=github.com/planetscale/vtprotobuf/cmd/protoc-gen-go-vtproto@v0.6.0
client=github.com/EventStore/EventStore-Client-Go/v4
gen=github.com/ditto-replicator/ditto/internal/pbwire/gen

command -v protoc >/dev/null || { echo "generate.sh: protoc not found (apt-get install -y protobuf-compiler)" >&2; exit 1; }
case "$(protoc --version)" in
  "libprotoc 3.21."*) ;;
  *) echo "generate.sh: protoc 3.21 expected (Debian bookworm's protobuf-compiler), found $(protoc --version)" >&2; exit 1 ;;
esac
# The well-known types protoc's own include directory holds.
include=$(dirname "$(dirname "$(command -v protoc)")")/include
[ -f "$include/google/protobuf/duration.proto" ] || include=/usr/include

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/bin" "$work/src/ditto/wire" "$work/out"
for p in "$protoc_gen_go" "$protoc_gen_vtproto"; do (cd "$work" && GOBIN="$work/bin" go install "$p"); done

protos=$(cd "$here" && go list -m -f '{{.Dir}}' "$client")/protos
for f in shared persistent streams; do
  sed -e 's/event_store\.client/ditto.wire.event_store.client/g' \
      -e 's|^import "shared.proto";|import "ditto/wire/shared.proto";|' \
      "$protos/$f.proto" >"$work/src/ditto/wire/$f.proto"
done

maps="Mditto/wire/shared.proto=$gen/sharedpb;sharedpb"
maps+=",Mditto/wire/persistent.proto=$gen/persistentpb;persistentpb"
maps+=",Mditto/wire/streams.proto=$gen/streamspb;streamspb"
maps+=",Mstatus.proto=google.golang.org/genproto/googleapis/rpc/status;status"
maps+=",Mcode.proto=google.golang.org/genproto/googleapis/rpc/code;code"

# The messages of a delivery are pooled, for the generated arm of
# BenchmarkDecodeRead; ditto itself decodes deliveries by hand (DecodeRead).
pool=""
for m in persistentpb.ReadResp persistentpb.ReadResp_ReadEvent persistentpb.ReadResp_ReadEvent_RecordedEvent \
         sharedpb.UUID sharedpb.UUID_Structured sharedpb.StreamIdentifier; do
  pool+=",pool=$gen/$m"
done

PATH="$work/bin:$PATH" protoc -I "$work/src" -I "$protos" -I "$include" \
  --go_out="$work/out" --go_opt="module=$gen,$maps" \
  --go-vtproto_out="$work/out" --go-vtproto_opt="module=$gen,$maps,features=size+marshal+unmarshal_unsafe+pool$pool" \
  ditto/wire/shared.proto ditto/wire/persistent.proto ditto/wire/streams.proto

rm -rf "$out"
mkdir -p "$out"
cp -r "$work/out/." "$out/"
