package policy

import (
	"context"
	"errors"
	"io"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
)

// Call runs fn on a source client; ditto's keeps the client usable across
// outages (see esdbconn.Call).
type Call func(ctx context.Context, fn func(client *esdb.Client) error) error

// ClientReader is a Reader on a source client. observe, if set, is called
// after each read with the operation and its duration.
func ClientReader(call Call, observe func(operation string, d time.Duration)) Reader {
	return &clientReader{call: call, observe: observe}
}

type clientReader struct {
	call    Call
	observe func(operation string, d time.Duration)
}

// Read implements Reader.
func (r *clientReader) Read(ctx context.Context, stream string, from uint64, count int) ([]*esdb.ResolvedEvent, error) {
	defer r.observed("read_stream", time.Now())
	var out []*esdb.ResolvedEvent
	err := r.call(ctx, func(client *esdb.Client) error {
		out = nil
		rs, err := client.ReadStream(ctx, stream, esdb.ReadStreamOptions{Direction: esdb.Forwards, From: esdb.Revision(from), ResolveLinkTos: true}, uint64(count))
		if err != nil {
			return gone(err)
		}
		defer rs.Close()
		for len(out) < count {
			ev, err := rs.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				out = nil
				return gone(err)
			}
			out = append(out, ev)
		}
		return nil
	})
	return out, err
}

// Last implements Reader.
func (r *clientReader) Last(ctx context.Context, stream string) (*esdb.RecordedEvent, error) {
	defer r.observed("read_stream", time.Now())
	var last *esdb.RecordedEvent
	err := r.call(ctx, func(client *esdb.Client) error {
		last = nil
		rs, err := client.ReadStream(ctx, stream, esdb.ReadStreamOptions{Direction: esdb.Backwards, From: esdb.End{}}, 1)
		if err != nil {
			return gone(err)
		}
		defer rs.Close()
		ev, err := rs.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return gone(err)
		}
		last = ev.OriginalEvent()
		return nil
	})
	return last, err
}

// gone turns "not found" and "deleted" into no events: what is no longer on
// the source is not on its way either.
func gone(err error) error {
	var e *esdb.Error
	if errors.As(err, &e) && (e.Code() == esdb.ErrorCodeResourceNotFound || e.Code() == esdb.ErrorCodeStreamDeleted) {
		return nil
	}
	return err
}

func (r *clientReader) observed(op string, start time.Time) {
	if r.observe != nil {
		r.observe(op, time.Since(start))
	}
}
