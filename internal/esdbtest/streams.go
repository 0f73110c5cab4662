package esdbtest

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf16"

	"github.com/EventStore/EventStore-Client-Go/v4/protos/shared"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/streams"
	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
)

// DefaultMaxAppendSize is the append size limit unless Options say
// otherwise: the v24.10 server default (§2).
const DefaultMaxAppendSize = 1 << 20

// readBatch is how many events a read or catch-up takes from the store at a
// time; the lock is released in between.
const readBatch = 256

// streamsService implements event_store.client.streams.Streams on a Store.
type streamsService struct {
	streams.UnimplementedStreamsServer
	store         *Store
	maxAppendSize int
	maxEventSize  int           // 0: no per-event limit (the v24.10 default)
	noBatchAppend bool          // BatchAppend is Unimplemented (Options.DisableBatchAppend)
	leader        string        // Options.LeaderAddr
	done          chan struct{} // closed when the server stops, ends subscriptions
}

// rpcError is a status error whose details travel in trailers, which is
// where the client looks (§6). set is grpc.SetTrailer-like.
func rpcError(set func(metadata.MD), code codes.Code, msg string, kv ...string) error {
	if len(kv) > 0 {
		set(metadata.Pairs(kv...))
	}
	return status.Error(code, msg)
}

// unaryTrailer adapts grpc.SetTrailer for rpcError in unary handlers.
func unaryTrailer(ctx context.Context) func(metadata.MD) {
	return func(md metadata.MD) { _ = grpc.SetTrailer(ctx, md) }
}

// streamDeleted is the error for a tombstoned (or soft-deleted with
// stream_exists) stream; the client requires the stream-name trailer.
func streamDeleted(set func(metadata.MD), stream string) error {
	return rpcError(set, codes.FailedPrecondition, fmt.Sprintf("Event stream '%s' is deleted.", stream),
		"exception", "stream-deleted", "stream-name", stream)
}

// Append serves the client-streaming append (§2): options first, then the
// proposed messages, checked against the size limits as they arrive.
func (s *streamsService) Append(srv streams.Streams_AppendServer) error {
	set := func(md metadata.MD) { srv.SetTrailer(md) }
	req, err := srv.Recv()
	if err != nil {
		return err
	}
	opts := req.GetOptions()
	if opts == nil {
		return status.Error(codes.Unknown, "the first append message must be the options")
	}
	stream := string(opts.GetStreamIdentifier().GetStreamName())
	var exp Expected
	switch o := opts.ExpectedStreamRevision.(type) {
	case *streams.AppendReq_Options_Any:
		exp.Kind = ExpectAny
	case *streams.AppendReq_Options_NoStream:
		exp.Kind = ExpectNoStream
	case *streams.AppendReq_Options_StreamExists:
		exp.Kind = ExpectStreamExists
	case *streams.AppendReq_Options_Revision:
		exp = Expected{Kind: ExpectRevision, Revision: o.Revision}
		if o.Revision == math.MaxUint64 {
			exp = Expected{Kind: ExpectNoStream} // StreamRevision.End is -1
		}
	default:
		return status.Error(codes.InvalidArgument, "expected stream revision is required")
	}
	var events []ProposedEvent
	total := 0
	for {
		req, err := srv.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		msg := req.GetProposedMessage()
		if msg == nil {
			return drain(srv, status.Error(codes.Unknown, "expected a proposed message"))
		}
		ev, size, missing := proposedEvent(uuidFromProto(msg.Id), msg.Metadata, msg.Data, msg.CustomMetadata)
		if missing != "" {
			return drain(srv, rpcError(set, codes.InvalidArgument, "Required metadata properties are missing: type, content-type",
				"exception", "missing-required-metadata-property", "required-metadata-properties", "type,content-type"))
		}
		id := ev.ID
		if s.maxEventSize > 0 && size > s.maxEventSize {
			return drain(srv, rpcError(set, codes.InvalidArgument,
				fmt.Sprintf("Event with Id: %s, Size: %d, exceeds Maximum Append Event Size of %d.", id, size, s.maxEventSize),
				"exception", "maximum-append-event-size-exceeded",
				"maximum-append-event-size", strconv.Itoa(s.maxEventSize),
				"event-id", id.String(),
				"proposed-append-event-size", strconv.Itoa(size)))
		}
		total += size
		if total > s.maxAppendSize {
			return drain(srv, rpcError(set, codes.InvalidArgument, fmt.Sprintf("Maximum Append Size of %d Exceeded.", s.maxAppendSize),
				"exception", "maximum-append-size-exceeded", "maximum-append-size", strconv.Itoa(s.maxAppendSize)))
		}
		events = append(events, ev)
	}
	res, err := s.store.Append(stream, exp, events)
	var wev *WrongExpectedVersionError
	var del *StreamDeletedError
	switch {
	case errors.As(err, &wev):
		return srv.SendAndClose(&streams.AppendResp{Result: &streams.AppendResp_WrongExpectedVersion_{
			WrongExpectedVersion: wrongExpectedVersion(wev)}})
	case errors.As(err, &del):
		return streamDeleted(set, stream)
	case err != nil:
		return status.Error(codes.Internal, err.Error())
	}
	success := &streams.AppendResp_Success{}
	if res.CurrentRevision < 0 {
		success.CurrentRevisionOption = &streams.AppendResp_Success_NoStream{NoStream: &shared.Empty{}}
	} else {
		success.CurrentRevisionOption = &streams.AppendResp_Success_CurrentRevision{CurrentRevision: uint64(res.CurrentRevision)}
	}
	if res.Position > 0 {
		success.PositionOption = &streams.AppendResp_Success_Position{Position: &streams.AppendResp_Position{
			CommitPosition: res.Position, PreparePosition: res.Position}}
	} else {
		success.PositionOption = &streams.AppendResp_Success_NoPosition{NoPosition: &shared.Empty{}}
	}
	return srv.SendAndClose(&streams.AppendResp{Result: &streams.AppendResp_Success_{Success: success}})
}

// proposedEvent is a proposed message as the store takes it, with its size
// as the server counts it against the limits (data + metadata + 2 × type
// length). missing names the first required metadata key (type, then
// content-type) that is absent.
func proposedEvent(id uuid.UUID, md map[string]string, data, custom []byte) (ev ProposedEvent, size int, missing string) {
	typ, ok := md["type"]
	if !ok {
		return ev, 0, "type"
	}
	ct, ok := md["content-type"]
	if !ok {
		return ev, 0, "content-type"
	}
	ev = ProposedEvent{ID: id, Type: typ, IsJSON: ct == "application/json", Data: data, Metadata: custom}
	return ev, len(data) + len(custom) + 2*utf16Len(typ), ""
}

// drain reads the rest of a refused append before its error is returned.
// Answering while the client still sends makes the Go client's Send fail
// with a bare EOF, which it reports instead of the status and trailers.
func drain(srv grpc.ServerStream, err error) error {
	for srv.RecvMsg(new(emptypb.Empty)) == nil {
	}
	return err
}

// wrongExpectedVersion fills both the current and the deprecated 20.6
// fields, as the server does.
func wrongExpectedVersion(e *WrongExpectedVersionError) *streams.AppendResp_WrongExpectedVersion {
	w := &streams.AppendResp_WrongExpectedVersion{}
	if e.Current < 0 {
		w.CurrentRevisionOption = &streams.AppendResp_WrongExpectedVersion_CurrentNoStream{CurrentNoStream: &shared.Empty{}}
		w.CurrentRevisionOption_20_6_0 = &streams.AppendResp_WrongExpectedVersion_NoStream_20_6_0{NoStream_20_6_0: &shared.Empty{}}
	} else {
		w.CurrentRevisionOption = &streams.AppendResp_WrongExpectedVersion_CurrentRevision{CurrentRevision: uint64(e.Current)}
		w.CurrentRevisionOption_20_6_0 = &streams.AppendResp_WrongExpectedVersion_CurrentRevision_20_6_0{CurrentRevision_20_6_0: uint64(e.Current)}
	}
	switch e.Expected.Kind {
	case ExpectAny:
		w.ExpectedRevisionOption = &streams.AppendResp_WrongExpectedVersion_ExpectedAny{ExpectedAny: &shared.Empty{}}
		w.ExpectedRevisionOption_20_6_0 = &streams.AppendResp_WrongExpectedVersion_Any_20_6_0{Any_20_6_0: &shared.Empty{}}
	case ExpectStreamExists:
		w.ExpectedRevisionOption = &streams.AppendResp_WrongExpectedVersion_ExpectedStreamExists{ExpectedStreamExists: &shared.Empty{}}
		w.ExpectedRevisionOption_20_6_0 = &streams.AppendResp_WrongExpectedVersion_StreamExists_20_6_0{StreamExists_20_6_0: &shared.Empty{}}
	case ExpectNoStream:
		w.ExpectedRevisionOption = &streams.AppendResp_WrongExpectedVersion_ExpectedNoStream{ExpectedNoStream: &shared.Empty{}}
		w.ExpectedRevisionOption_20_6_0 = &streams.AppendResp_WrongExpectedVersion_ExpectedRevision_20_6_0{ExpectedRevision_20_6_0: math.MaxUint64}
	default:
		w.ExpectedRevisionOption = &streams.AppendResp_WrongExpectedVersion_ExpectedRevision{ExpectedRevision: e.Expected.Revision}
		w.ExpectedRevisionOption_20_6_0 = &streams.AppendResp_WrongExpectedVersion_ExpectedRevision_20_6_0{ExpectedRevision_20_6_0: e.Expected.Revision}
	}
	return w
}

// utf16Len is the length of s in UTF-16 code units; the server sizes event
// types as .NET strings.
func utf16Len(s string) int {
	n := 0
	for _, r := range s {
		n += utf16.RuneLen(r)
	}
	return n
}

// uuidFromProto decodes a structured (two big-endian halves) or string UUID.
// A missing or malformed id becomes a random one, as the client would send.
func uuidFromProto(u *shared.UUID) uuid.UUID {
	switch v := u.GetValue().(type) {
	case *shared.UUID_Structured_:
		var id uuid.UUID
		binary.BigEndian.PutUint64(id[:8], uint64(v.Structured.GetMostSignificantBits()))
		binary.BigEndian.PutUint64(id[8:], uint64(v.Structured.GetLeastSignificantBits()))
		return id
	case *shared.UUID_String_:
		if id, err := uuid.Parse(v.String_); err == nil {
			return id
		}
	}
	return uuid.New()
}

// uuidToProto encodes id as the read options ask.
func uuidToProto(id uuid.UUID, asString bool) *shared.UUID {
	if asString {
		return &shared.UUID{Value: &shared.UUID_String_{String_: id.String()}}
	}
	return &shared.UUID{Value: &shared.UUID_Structured_{Structured: &shared.UUID_Structured{
		MostSignificantBits:  int64(binary.BigEndian.Uint64(id[:8])),
		LeastSignificantBits: int64(binary.BigEndian.Uint64(id[8:])),
	}}}
}

// toRecorded converts a record. The metadata map must hold exactly type,
// content-type and created (.NET ticks since the Unix epoch): the client
// exits the process when created is missing (§0).
func toRecorded(rec *Record, asString bool) *streams.ReadResp_ReadEvent_RecordedEvent {
	if rec == nil {
		return nil
	}
	return &streams.ReadResp_ReadEvent_RecordedEvent{
		Id:               uuidToProto(rec.ID, asString),
		StreamIdentifier: &shared.StreamIdentifier{StreamName: []byte(rec.Stream)},
		StreamRevision:   uint64(rec.Number),
		PreparePosition:  rec.Position,
		CommitPosition:   rec.Position,
		Metadata: map[string]string{
			"type":         rec.Type,
			"content-type": rec.ContentType(),
			"created":      strconv.FormatInt(rec.Created.UnixNano()/100, 10),
		},
		CustomMetadata: rec.Metadata,
		Data:           rec.Data,
	}
}

// eventResp wraps a resolved record; commit_position is the original's.
func eventResp(r ResolvedRecord, asString bool) *streams.ReadResp {
	return &streams.ReadResp{Content: &streams.ReadResp_Event{Event: &streams.ReadResp_ReadEvent{
		Event:    toRecorded(r.Event, asString),
		Link:     toRecorded(r.Link, asString),
		Position: &streams.ReadResp_ReadEvent_CommitPosition{CommitPosition: r.Original().Position},
	}}}
}

// Read serves plain reads and catch-up subscriptions of a stream or $all
// (§3). Plain reads may only send event or stream_not_found (§0).
func (s *streamsService) Read(req *streams.ReadReq, srv streams.Streams_ReadServer) error {
	o := req.GetOptions()
	if o == nil || o.UuidOption == nil {
		return status.Error(codes.InvalidArgument, "read options with a uuid option are required")
	}
	asString := o.UuidOption.GetString_() != nil
	forward := o.ReadDirection == streams.ReadReq_Options_Forwards
	_, filtered := o.FilterOption.(*streams.ReadReq_Options_Filter)
	switch so := o.StreamOption.(type) {
	case *streams.ReadReq_Options_Stream:
		if filtered {
			break
		}
		switch co := o.CountOption.(type) {
		case *streams.ReadReq_Options_Count:
			return s.readStream(srv, so.Stream, forward, co.Count, o.ResolveLinks, asString)
		case *streams.ReadReq_Options_Subscription:
			if forward {
				return s.subscribeStream(srv, so.Stream, o.ResolveLinks, asString)
			}
		}
	case *streams.ReadReq_Options_All:
		switch co := o.CountOption.(type) {
		case *streams.ReadReq_Options_Count:
			return s.readAll(srv, so.All, forward, co.Count, o.ResolveLinks, asString)
		case *streams.ReadReq_Options_Subscription:
			if forward {
				return s.subscribeAll(srv, so.All, o.GetFilter(), o.ResolveLinks, asString)
			}
		}
	}
	return status.Error(codes.InvalidArgument, "The combination of read options is invalid.")
}

// readStream is a plain stream read, paged through the store.
func (s *streamsService) readStream(srv streams.Streams_ReadServer, so *streams.ReadReq_Options_StreamOptions, forward bool, count uint64, resolve, asString bool) error {
	set := func(md metadata.MD) { srv.SetTrailer(md) }
	name := string(so.GetStreamIdentifier().GetStreamName())
	var from int64
	switch r := so.RevisionOption.(type) {
	case *streams.ReadReq_Options_StreamOptions_Start:
		from = 0
	case *streams.ReadReq_Options_StreamOptions_End:
		if forward {
			// The real index reader rejects a negative start.
			return status.Error(codes.Unknown, "cannot read forwards from the end of a stream")
		}
		from = -1
	case *streams.ReadReq_Options_StreamOptions_Revision:
		if r.Revision > math.MaxInt64 {
			from = math.MaxInt64
		} else {
			from = int64(r.Revision)
		}
	}
	if count == 0 {
		return status.Error(codes.Unknown, "maxCount must be positive")
	}
	for count > 0 {
		batch := readBatch
		if count < uint64(batch) {
			batch = int(count)
		}
		recs, err := s.store.ReadStream(name, from, forward, batch, resolve)
		var del *StreamDeletedError
		switch {
		case errors.Is(err, ErrStreamNotFound):
			return srv.Send(&streams.ReadResp{Content: &streams.ReadResp_StreamNotFound_{
				StreamNotFound: &streams.ReadResp_StreamNotFound{StreamIdentifier: so.GetStreamIdentifier()}}})
		case errors.As(err, &del):
			return streamDeleted(set, name)
		case err != nil:
			return status.Error(codes.Internal, err.Error())
		}
		if len(recs) == 0 {
			return nil
		}
		if err := sendEvents(srv, recs, asString); err != nil {
			return err
		}
		count -= uint64(len(recs))
		last := recs[len(recs)-1].Original().Number
		if forward {
			from = last + 1
		} else {
			if last == 0 {
				return nil
			}
			from = last - 1
		}
	}
	return nil
}

// readAll is a plain $all read: forwards from P inclusive, backwards from P
// exclusive.
func (s *streamsService) readAll(srv streams.Streams_ReadServer, ao *streams.ReadReq_Options_AllOptions, forward bool, count uint64, resolve, asString bool) error {
	var from uint64
	switch p := ao.AllOption.(type) {
	case *streams.ReadReq_Options_AllOptions_Start:
		if !forward {
			return nil
		}
		from = 0
	case *streams.ReadReq_Options_AllOptions_End:
		if forward {
			return nil
		}
		from = math.MaxUint64
	case *streams.ReadReq_Options_AllOptions_Position:
		from = p.Position.GetCommitPosition()
	}
	if count == 0 {
		return status.Error(codes.Unknown, "maxCount must be positive")
	}
	for count > 0 {
		batch := readBatch
		if count < uint64(batch) {
			batch = int(count)
		}
		recs := s.store.ReadAll(from, forward, batch, resolve)
		if len(recs) == 0 {
			return nil
		}
		if err := sendEvents(srv, recs, asString); err != nil {
			return err
		}
		count -= uint64(len(recs))
		last := recs[len(recs)-1].Original().Position
		if forward {
			from = last + 1
		} else {
			from = last
		}
	}
	return nil
}

// confirm sends the subscription confirmation, which must come first (§0).
func confirm(srv streams.Streams_ReadServer) error {
	return srv.Send(&streams.ReadResp{Content: &streams.ReadResp_Confirmation{
		Confirmation: &streams.ReadResp_SubscriptionConfirmation{SubscriptionId: uuid.NewString()}}})
}

var caughtUpResp = &streams.ReadResp{Content: &streams.ReadResp_CaughtUp_{CaughtUp: &streams.ReadResp_CaughtUp{}}}

// wait blocks until the store changes, the call ends or the server stops.
func (s *streamsService) wait(ctx context.Context, changed <-chan struct{}) error {
	select {
	case <-changed:
		return nil
	case <-ctx.Done():
		return status.FromContextError(ctx.Err()).Err()
	case <-s.done:
		return status.Error(codes.Unavailable, "Server Is Shutting Down")
	}
}

// subscribeStream is a catch-up subscription to one stream. It reads the
// store directly both in catch-up and live, so it never falls behind;
// caught_up is sent once, when the first read comes back empty.
func (s *streamsService) subscribeStream(srv streams.Streams_ReadServer, so *streams.ReadReq_Options_StreamOptions, resolve, asString bool) error {
	set := func(md metadata.MD) { srv.SetTrailer(md) }
	name := string(so.GetStreamIdentifier().GetStreamName())
	if s.store.isTombstoned(name) {
		return streamDeleted(set, name)
	}
	var next int64
	switch r := so.RevisionOption.(type) {
	case *streams.ReadReq_Options_StreamOptions_Start:
		next = 0
	case *streams.ReadReq_Options_StreamOptions_End:
		next = s.store.LastEventNumber(name) + 1
	case *streams.ReadReq_Options_StreamOptions_Revision:
		if r.Revision >= math.MaxInt64 {
			next = math.MaxInt64
		} else {
			next = int64(r.Revision) + 1 // exclusive
		}
	}
	if err := confirm(srv); err != nil {
		return err
	}
	caughtUp := false
	for {
		changed := s.store.Changed()
		recs, tomb := s.store.streamSince(name, next, readBatch, resolve)
		for _, r := range recs {
			if err := srv.Send(eventResp(r, asString)); err != nil {
				return err
			}
			next = r.Original().Number + 1
		}
		if tomb != nil {
			if err := srv.Send(eventResp(ResolvedRecord{Event: tomb}, asString)); err != nil {
				return err
			}
			return streamDeleted(set, name)
		}
		if len(recs) > 0 {
			continue
		}
		if !caughtUp {
			caughtUp = true
			if err := srv.Send(caughtUpResp); err != nil {
				return err
			}
		}
		if err := s.wait(srv.Context(), changed); err != nil {
			return err
		}
	}
}

// allFilter is a compiled server-side $all subscription filter.
type allFilter struct {
	byType   bool
	re       *regexp.Regexp
	prefixes []string
	interval int // checkpoint interval, in considered events
}

func (f *allFilter) match(rec *Record) bool {
	v := rec.Stream
	if f.byType {
		v = rec.Type
	}
	if f.re != nil {
		return f.re.MatchString(v)
	}
	for _, p := range f.prefixes {
		if strings.HasPrefix(v, p) {
			return true
		}
	}
	return false
}

// newAllFilter compiles the filter options (§3): a non-empty regex wins
// (unanchored, like .NET Regex.Match), else the prefixes.
func newAllFilter(fo *streams.ReadReq_Options_FilterOptions) (*allFilter, error) {
	f := &allFilter{}
	var expr *streams.ReadReq_Options_FilterOptions_Expression
	switch e := fo.Filter.(type) {
	case *streams.ReadReq_Options_FilterOptions_StreamIdentifier:
		expr = e.StreamIdentifier
	case *streams.ReadReq_Options_FilterOptions_EventType:
		f.byType, expr = true, e.EventType
	default:
		return nil, errors.New("a filter needs a stream or event type expression")
	}
	if expr.GetRegex() != "" {
		re, err := regexp.Compile(expr.GetRegex())
		if err != nil {
			return nil, fmt.Errorf("invalid filter regex: %w", err)
		}
		f.re = re
	} else {
		f.prefixes = expr.GetPrefix()
	}
	window := 32
	if m, ok := fo.Window.(*streams.ReadReq_Options_FilterOptions_Max); ok && m.Max > 0 {
		window = int(m.Max)
	}
	if fo.CheckpointIntervalMultiplier < 1 {
		return nil, errors.New("checkpointIntervalMultiplier must be at least 1")
	}
	f.interval = window * int(fo.CheckpointIntervalMultiplier)
	return f, nil
}

// excludedLive reports whether the default $all filter drops a record in
// live mode: epoch records and $all persistent subscription bookkeeping.
func excludedLive(stream string) bool {
	if stream == "$epoch-information" {
		return true
	}
	if strings.HasPrefix(stream, "$persistentsubscription-$all::") {
		return strings.HasSuffix(stream, "-checkpoint") || strings.HasSuffix(stream, "-parked")
	}
	return false
}

// subscribeAll is a catch-up subscription to $all, optionally filtered,
// with checkpoints every interval considered events and once before
// caught_up (§3). The start position is exclusive.
func (s *streamsService) subscribeAll(srv streams.Streams_ReadServer, ao *streams.ReadReq_Options_AllOptions, fo *streams.ReadReq_Options_FilterOptions, resolve, asString bool) error {
	var filter *allFilter
	if fo != nil {
		var err error
		if filter, err = newAllFilter(fo); err != nil {
			return status.Error(codes.InvalidArgument, err.Error())
		}
	}
	var after uint64
	switch p := ao.AllOption.(type) {
	case *streams.ReadReq_Options_AllOptions_Start:
		after = 0
	case *streams.ReadReq_Options_AllOptions_End:
		after = s.store.HeadPosition()
	case *streams.ReadReq_Options_AllOptions_Position:
		after = p.Position.GetCommitPosition()
	}
	if err := confirm(srv); err != nil {
		return err
	}
	lastCheckpoint := after
	checkpoint := func(pos uint64) error {
		if pos <= lastCheckpoint {
			return nil // checkpoints that do not advance are suppressed
		}
		lastCheckpoint = pos
		return srv.Send(&streams.ReadResp{Content: &streams.ReadResp_Checkpoint_{Checkpoint: &streams.ReadResp_Checkpoint{
			CommitPosition: pos, PreparePosition: pos}}})
	}
	caughtUp := false
	considered := 0
	for {
		changed := s.store.Changed()
		recs := s.store.ReadAll(after+1, true, readBatch, resolve)
		for _, r := range recs {
			rec := r.Original()
			after = rec.Position
			if (caughtUp || filter != nil) && excludedLive(rec.Stream) {
				continue
			}
			if filter == nil {
				if err := srv.Send(eventResp(r, asString)); err != nil {
					return err
				}
				continue
			}
			considered++
			if filter.match(rec) {
				if err := srv.Send(eventResp(r, asString)); err != nil {
					return err
				}
			}
			if considered%filter.interval == 0 {
				if err := checkpoint(rec.Position); err != nil {
					return err
				}
			}
		}
		if len(recs) > 0 {
			continue
		}
		if !caughtUp {
			caughtUp = true
			if filter != nil {
				if err := checkpoint(after); err != nil {
					return err
				}
			}
			if err := srv.Send(caughtUpResp); err != nil {
				return err
			}
		}
		if err := s.wait(srv.Context(), changed); err != nil {
			return err
		}
	}
}

// expectedFromDelete decodes the expected revision of Delete and Tombstone;
// the client default is any.
func expectedFromDelete(rev any) Expected {
	switch o := rev.(type) {
	case *streams.DeleteReq_Options_Revision:
		return Expected{Kind: ExpectRevision, Revision: o.Revision}
	case *streams.TombstoneReq_Options_Revision:
		return Expected{Kind: ExpectRevision, Revision: o.Revision}
	case *streams.DeleteReq_Options_NoStream, *streams.TombstoneReq_Options_NoStream:
		return Expected{Kind: ExpectNoStream}
	case *streams.DeleteReq_Options_StreamExists, *streams.TombstoneReq_Options_StreamExists:
		return Expected{Kind: ExpectStreamExists}
	}
	return Expected{Kind: ExpectAny}
}

// expectedNumber is the classic numeric form of an expected version, as in
// the expected-version trailer: -2 any, -1 no stream, -4 stream exists.
func expectedNumber(e Expected) string {
	switch e.Kind {
	case ExpectAny:
		return "-2"
	case ExpectNoStream:
		return "-1"
	case ExpectStreamExists:
		return "-4"
	}
	return strconv.FormatUint(e.Revision, 10)
}

// deleteError maps store errors of Delete and Tombstone. A wrong expected
// version is a status error here, unlike in Append (§6).
func deleteError(ctx context.Context, stream string, err error) error {
	set := unaryTrailer(ctx)
	var wev *WrongExpectedVersionError
	var del *StreamDeletedError
	switch {
	case errors.As(err, &wev):
		return rpcError(set, codes.FailedPrecondition,
			fmt.Sprintf("Append failed due to WrongExpectedVersion. Stream: %s, Expected version: %s, Current version: %d",
				stream, expectedNumber(wev.Expected), wev.Current),
			"exception", "wrong-expected-version", "stream-name", stream,
			"expected-version", expectedNumber(wev.Expected), "actual-version", strconv.FormatInt(wev.Current, 10))
	case errors.As(err, &del):
		return streamDeleted(set, stream)
	}
	return status.Error(codes.Internal, err.Error())
}

// Delete soft-deletes a stream (§7).
func (s *streamsService) Delete(ctx context.Context, req *streams.DeleteReq) (*streams.DeleteResp, error) {
	o := req.GetOptions()
	stream := string(o.GetStreamIdentifier().GetStreamName())
	pos, err := s.store.Delete(stream, expectedFromDelete(o.GetExpectedStreamRevision()))
	if err != nil {
		return nil, deleteError(ctx, stream, err)
	}
	return &streams.DeleteResp{PositionOption: &streams.DeleteResp_Position_{Position: &streams.DeleteResp_Position{
		CommitPosition: pos, PreparePosition: pos}}}, nil
}

// Tombstone hard-deletes a stream (§7).
func (s *streamsService) Tombstone(ctx context.Context, req *streams.TombstoneReq) (*streams.TombstoneResp, error) {
	o := req.GetOptions()
	stream := string(o.GetStreamIdentifier().GetStreamName())
	pos, err := s.store.TombstoneStream(stream, expectedFromDelete(o.GetExpectedStreamRevision()))
	if err != nil {
		return nil, deleteError(ctx, stream, err)
	}
	return &streams.TombstoneResp{PositionOption: &streams.TombstoneResp_Position_{Position: &streams.TombstoneResp_Position{
		CommitPosition: pos, PreparePosition: pos}}}, nil
}

// sendEvents sends recs as ReadResp events, in order.
func sendEvents(srv streams.Streams_ReadServer, recs []ResolvedRecord, asString bool) error {
	for _, r := range recs {
		if err := srv.Send(eventResp(r, asString)); err != nil {
			return err
		}
	}
	return nil
}
