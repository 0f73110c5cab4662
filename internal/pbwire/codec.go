// Package pbwire is a gRPC codec that encodes and decodes the messages on the
// replication hot path by hand:
//
//   - persistent.ReadResp holding an event (a persistent-subscription
//     delivery);
//   - persistent.ReadReq holding an Ack or a Nack (the acknowledgements of
//     deliveries, with their lists of event ids);
//   - streams.AppendReq holding a proposed message (an appended event);
//   - streams.BatchAppendReq, whole: correlation id, options (stream, every
//     expected position, both deadline forms), proposed messages, is_final;
//   - streams.BatchAppendResp reporting a success (encoded only: the test
//     server's answers to nearly every write).
//
// ditto itself sends its appends and acks from its own values (BatchWrite,
// Settle), reads deliveries as Raw bytes (DecodeRead) and decodes the
// answers to its appends by hand (BatchAppendSuccess); the test server reads
// acks back with AckIDs. The generated-message paths serve the test server
// and the clients of the benchmark.
//
// The generic protobuf runtime walks their metadata maps and repeated
// messages through reflection and allocates every string, byte field and
// sub-message on its own; profiles of a replication run put that at a fifth
// of the CPU of both ditto and the test server. Every other message, and any
// hot message with a shape this package does not know (unknown fields, a
// subscription confirmation, the read or append options, a sub-message sent
// twice, invalid UTF-8), goes through the standard protobuf runtime, so the
// wire bytes and decoded values are the same either way.
package pbwire

import (
	"errors"
	"fmt"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/protoadapt"

	"github.com/EventStore/EventStore-Client-Go/v4/protos/persistent"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/streams"
)

// Raw is a message as bytes on the wire: sent as it is, or received into
// for the caller to decode (DecodeRead). It lets a server send a message it
// has encoded ahead, and a client skip the generated message types.
type Raw []byte

// direct is a message encoded from ditto's own values rather than from a
// generated message: *BatchWrite and *Settle.
type direct interface {
	size() (int, error)
	append(b []byte) []byte
}

// Name is the content subtype of the codec: it replaces grpc's "proto".
const Name = "proto"

// Codec implements encoding.CodecV2.
type Codec struct{}

// Register makes Codec the process-wide "proto" codec for clients. It must
// be called before any connection is made (grpc reads the registry when a
// call starts, without locking).
func Register() { encoding.RegisterCodecV2(Codec{}) }

// Name implements encoding.CodecV2.
func (Codec) Name() string { return Name }

// Marshal implements encoding.CodecV2.
func (Codec) Marshal(v any) (mem.BufferSlice, error) {
	var w writer
	switch m := v.(type) {
	case *Raw:
		return mem.BufferSlice{mem.SliceBuffer(*m)}, nil
	case direct:
		n, err := m.size()
		if err != nil {
			return nil, err
		}
		w.total = n
		return w.finish(m.append), nil
	case *streams.AppendReq:
		if w.appendReqSize(m) {
			return w.finish(func(b []byte) []byte { return w.appendAppendReq(b, m) }), nil
		}
	case *persistent.ReadResp:
		if w.readRespSize(m) {
			return w.finish(func(b []byte) []byte { return w.appendReadResp(b, m) }), nil
		}
	case *streams.BatchAppendReq:
		if w.batchAppendReqSize(m) {
			return w.finish(func(b []byte) []byte { return w.appendBatchAppendReq(b, m) }), nil
		}
	case *streams.BatchAppendResp:
		if w.batchAppendRespSize(m) {
			return w.finish(func(b []byte) []byte { return w.appendBatchAppendResp(b, m) }), nil
		}
	case *persistent.ReadReq:
		if w.readReqSize(m) {
			return w.finish(func(b []byte) []byte { return w.appendReadReq(b, m) }), nil
		}
	}
	return marshalProto(v)
}

// Unmarshal implements encoding.CodecV2. The hot messages are decoded from
// the received bytes (see materialize), which their strings and byte slices
// share, instead of one allocation per field.
func (Codec) Unmarshal(data mem.BufferSlice, v any) error {
	switch m := v.(type) {
	case *Raw:
		*m = materialize(data)
		return nil
	case *persistent.ReadResp:
		return byHand(data, m, decodeReadResp)
	case *streams.AppendReq:
		return byHand(data, m, decodeAppendReq)
	case *streams.BatchAppendReq:
		return byHand(data, m, decodeBatchAppendReq)
	case *persistent.ReadReq:
		return byHand(data, m, decodeReadReq)
	}
	return unmarshalProto(data, v)
}

// materialize returns the bytes of data for the caller to keep. A message
// that arrived whole in a buffer grpc allocated for it alone (below its
// pooling threshold; Free does nothing) is kept as it is: nothing else
// writes to that memory. Anything else is copied, since pooled buffers are
// reused once freed.
func materialize(data mem.BufferSlice) []byte {
	if len(data) == 1 {
		if b, ok := data[0].(mem.SliceBuffer); ok {
			return b[:len(b):len(b)]
		}
	}
	return data.Materialize()
}

// byHand decodes data into m with decode, or with protobuf when decode
// leaves the shape to it.
func byHand[M proto.Message](data mem.BufferSlice, m M, decode func([]byte, M) error) error {
	b := materialize(data)
	if decode(b, m) == nil {
		return nil
	}
	return proto.Unmarshal(b, m)
}

// errShape means a message is valid protobuf (or not) in a shape the hand
// decoder leaves to the protobuf runtime.
var errShape = errors.New("pbwire: shape not handled")

func messageOf(v any) proto.Message {
	switch v := v.(type) {
	case protoadapt.MessageV1:
		return protoadapt.MessageV2Of(v)
	case protoadapt.MessageV2:
		return v
	}
	return nil
}

// marshalProto is grpc's own proto codec: pooled buffers above its threshold.
func marshalProto(v any) (mem.BufferSlice, error) {
	m := messageOf(v)
	if m == nil {
		return nil, fmt.Errorf("proto: failed to marshal, message is %T, want proto.Message", v)
	}
	size := proto.Size(m)
	if mem.IsBelowBufferPoolingThreshold(size) {
		b, err := proto.Marshal(m)
		if err != nil {
			return nil, err
		}
		return mem.BufferSlice{mem.SliceBuffer(b)}, nil
	}
	pool := mem.DefaultBufferPool()
	buf := pool.Get(size)
	b, err := proto.MarshalOptions{}.MarshalAppend((*buf)[:0], m)
	if err != nil {
		pool.Put(buf)
		return nil, err
	}
	*buf = b
	return mem.BufferSlice{mem.NewBuffer(buf, pool)}, nil
}

func unmarshalProto(data mem.BufferSlice, v any) error {
	m := messageOf(v)
	if m == nil {
		return fmt.Errorf("failed to unmarshal, message is %T, want proto.Message", v)
	}
	buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
	defer buf.Free()
	return proto.Unmarshal(buf.ReadOnlyData(), m)
}
