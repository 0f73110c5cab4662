package verify

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
)

// errStreamNotFound and errStreamDeleted classify a read of a stream that cannot be read, so the
// comparison can tell "nothing there" from a failure.
var (
	// errStreamNotFound: the stream never had events, or it was soft-deleted.
	errStreamNotFound = errors.New("stream not found")
	// errStreamDeleted: the stream was tombstoned (hard-deleted).
	errStreamDeleted = errors.New("stream deleted")
)

// readPageFunc reads up to count events of stream forwards, starting at event number from,
// without resolving links. A page shorter than count means the end of the stream was reached.
type readPageFunc func(ctx context.Context, stream string, from uint64, count int) ([]*esdb.RecordedEvent, error)

// clientReader reads pages with the official client.
func clientReader(c *esdb.Client) readPageFunc {
	// Without link resolution every record comes back as Event; OriginalEvent also covers a
	// server that fills Link instead.
	return pageReader(c, false, (*esdb.ResolvedEvent).OriginalEvent)
}

// pageReader reads pages of a stream with the official client, links resolved or not, and
// keeps what record makes of each event (nil: nothing).
func pageReader(c *esdb.Client, resolve bool, record func(*esdb.ResolvedEvent) *esdb.RecordedEvent) readPageFunc {
	return func(ctx context.Context, stream string, from uint64, count int) ([]*esdb.RecordedEvent, error) {
		rs, err := c.ReadStream(ctx, stream, esdb.ReadStreamOptions{
			Direction:      esdb.Forwards,
			From:           esdb.Revision(from),
			ResolveLinkTos: resolve,
		}, uint64(count))
		if err != nil {
			return nil, classifyReadError(stream, from, err)
		}
		defer rs.Close()

		events := make([]*esdb.RecordedEvent, 0, min(count, 64))
		// The server sends at most count events; the bound keeps a misbehaving server from
		// growing the page beyond what was asked for.
		for range count + 1 {
			ev, err := rs.Recv()
			if errors.Is(err, io.EOF) {
				return events, nil
			}
			if err != nil {
				return nil, classifyReadError(stream, from, err)
			}
			if rec := record(ev); rec != nil {
				events = append(events, rec)
			}
		}
		return nil, fmt.Errorf("read %q from %d: server sent more than the %d events asked for", stream, from, count)
	}
}

// classifyReadError wraps err so that errors.Is finds errStreamNotFound or errStreamDeleted
// when the stream is absent, and keeps the client's error for everything else.
func classifyReadError(stream string, from uint64, err error) error {
	var esErr *esdb.Error
	if errors.As(err, &esErr) {
		switch esErr.Code() {
		case esdb.ErrorCodeResourceNotFound:
			return fmt.Errorf("read %q: %w: %w", stream, errStreamNotFound, err)
		case esdb.ErrorCodeStreamDeleted:
			return fmt.Errorf("read %q: %w: %w", stream, errStreamDeleted, err)
		}
	}
	return fmt.Errorf("read %q from event %d: %w", stream, from, err)
}
