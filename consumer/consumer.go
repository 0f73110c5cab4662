// Package consumer reads persistent subscription groups on the source and
// hands every event to the replicator as a Delivery that is later acked or
// nacked. It owns connecting, reconnecting with backoff (the v4 client never
// reconnects by itself) and closing.
package consumer

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/persistent"
	"github.com/cenkalti/backoff/v4"
	"github.com/google/uuid"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ditto-replicator/ditto/config"
	"github.com/ditto-replicator/ditto/internal/esdbconn"
	"github.com/ditto-replicator/ditto/internal/metrics"
	"github.com/ditto-replicator/ditto/internal/pbwire"
)

// Delivery is one event received from a subscription.
type Delivery struct {
	Event      *esdb.ResolvedEvent // nil after Release
	RetryCount int
	Sub        *Subscription
	conn       *conn
	id         uuid.UUID // of the delivered record (the link, for a resolved link), which acks name
	number     uint64    // of the delivered record, in the subscription's stream
}

// OriginalNumber is the delivered record's event number in the
// subscription's stream: the link's, for a resolved link.
func (d *Delivery) OriginalNumber() uint64 { return d.number }

// Release drops the decoded event; acks and nacks still work. A delivery
// waits in memory until it is settled, and the decoded event with its two
// records is a third of what it holds: a caller that has taken what it
// needs releases it.
func (d *Delivery) Release() { d.Event = nil }

// Subscription is one subscription group and its bound metrics.
type Subscription struct {
	config.Subscription
	Metrics *metrics.Sub
}

// conn is one consumer connection. Acks and nacks are sent on the gRPC
// stream, which allows one sender at a time, so they go through mu.
type conn struct {
	mu   sync.Mutex
	r    *reader
	once sync.Once
}

// close ends the connection; the source requeues its unacked events.
func (cn *conn) close() {
	cn.once.Do(cn.r.close)
}

// Options tune the consumer.
type Options struct {
	BufferSize               int  // in-flight events per connection
	ConsumersPerSubscription int  // connections per group
	Create                   bool // create a missing group instead of failing
	// BackoffInitial and BackoffMax bound the pause between reconnects
	// (exponential with jitter). Defaults: 100ms and 10s.
	BackoffInitial, BackoffMax time.Duration
	// Dial, if set, makes a new source client when the current one has
	// closed itself (the v4 client does so for good when the source is
	// unreachable during a discovery; see esdbconn). Without it, a source
	// outage at start or of more than a second or two is never recovered.
	// The client only creates missing groups.
	Dial func() (*esdb.Client, error)
	// Config, required, is the source's parsed connection string:
	// subscriptions are read on a connection of the consumer's own to the
	// leader it names.
	Config *esdb.Configuration
}

// readWindow is the HTTP/2 flow-control window of the source connection,
// for each read and for the connection. The subscription's buffer size
// already bounds the events in flight; left to grpc, the window starts at
// 64 KiB and grows only as it measures more bandwidth, which at the start
// of a backlog took 40 to 250 ms to make way for the buffer's 10,000 events
// (and now and then never did, for a whole run of the benchmark). Fixed, it
// is the most that measuring grows it to.
const readWindow = 16 << 20

// Consumer reads every configured subscription group.
type Consumer struct {
	client    *esdbconn.Client
	leader    *esdbconn.Leader
	timeout   time.Duration // for a subscription to be confirmed
	subs      []*Subscription
	opts      Options
	log       zerolog.Logger
	connected atomic.Int64
	total     int

	connCtx     context.Context // parent of every connection; ended by Close
	cancelConns context.CancelFunc

	mu    sync.Mutex
	conns map[*conn]struct{}
}

// New returns a consumer of subs on client, which it owns from now on (Close
// closes it); m provides the per-group metrics.
func New(client *esdb.Client, subs []config.Subscription, m *metrics.Metrics, opts Options, log zerolog.Logger) *Consumer {
	if opts.BackoffInitial <= 0 {
		opts.BackoffInitial = 100 * time.Millisecond
	}
	if opts.BackoffMax <= 0 {
		opts.BackoffMax = 10 * time.Second
	}
	if opts.ConsumersPerSubscription <= 0 {
		opts.ConsumersPerSubscription = 1
	}
	c := &Consumer{
		client:  esdbconn.New(client, opts.Dial),
		leader:  esdbconn.NewLeader(opts.Config, grpc.WithInitialWindowSize(readWindow), grpc.WithInitialConnWindowSize(readWindow)),
		timeout: 10 * time.Second,
		opts:    opts,
		log:     log,
		conns:   map[*conn]struct{}{},
	}
	if d := opts.Config.DefaultDeadline; d != nil && *d > 0 {
		c.timeout = *d
	}
	c.connCtx, c.cancelConns = context.WithCancel(context.Background())
	for _, s := range subs {
		c.subs = append(c.subs, &Subscription{Subscription: s, Metrics: m.ForSubscription(s.Stream, s.Group)})
	}
	c.total = len(c.subs) * opts.ConsumersPerSubscription
	return c
}

// Ready reports whether every consumer connection is connected.
func (c *Consumer) Ready() bool { return int(c.connected.Load()) == c.total }

// ErrFatal marks errors that retrying cannot fix (wrong credentials, access
// denied, a missing group without DITTO_CREATE_SUBSCRIPTIONS).
var ErrFatal = errors.New("fatal subscription error")

// Run connects every consumer and sends each received event to out until
// stop is cancelled. It blocks while out is full: that is the back-pressure
// on the source. It returns when every reader has stopped; connections stay
// open so that in-flight events can still be acked, until Close.
// A fatal error on a first connection attempt stops Run with that error.
func (c *Consumer) Run(stop context.Context, out chan<- *Delivery) error {
	ctx, cancel := context.WithCancelCause(stop)
	defer cancel(nil)
	var wg sync.WaitGroup
	for _, s := range c.subs {
		for i := 0; i < c.opts.ConsumersPerSubscription; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := c.runOne(ctx, s, out); err != nil {
					cancel(err)
				}
			}()
		}
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// runOne keeps one consumer connection of s alive until ctx ends.
func (c *Consumer) runOne(ctx context.Context, s *Subscription, out chan<- *Delivery) error {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = c.opts.BackoffInitial
	b.MaxInterval = c.opts.BackoffMax
	b.MaxElapsedTime = 0 // retry for as long as the process runs
	b.RandomizationFactor = 0.5
	b.Reset()
	everConnected := false
	log := c.log.With().Str("stream", s.Stream).Str("group", s.Group).Logger()
	for ctx.Err() == nil {
		cn, err := c.subscribe(ctx, s)
		if err == nil {
			everConnected = true
			s.Metrics.Connected.Inc()
			c.connected.Add(1)
			log.Info().Msg("subscription connected")
			received := c.receive(ctx, s, cn, out)
			c.connected.Add(-1)
			s.Metrics.Connected.Dec()
			if ctx.Err() != nil {
				return nil
			}
			if received {
				b.Reset()
			}
			s.Metrics.Reconnects.Inc()
		} else {
			if errors.Is(err, ErrFatal) && !everConnected {
				return err
			}
			if ctx.Err() != nil {
				return nil
			}
			log.Warn().Err(err).Msg("cannot connect to subscription; retrying")
		}
		wait := b.NextBackOff()
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
	return nil
}

// subscribe opens one connection, creating the group first if allowed.
func (c *Consumer) subscribe(ctx context.Context, s *Subscription) (*conn, error) {
	r, err := c.open(ctx, s)
	if errors.Is(err, errNotFound) && c.opts.Create {
		// Call gives up on a call the v4 client never answers (see
		// esdbconn) and replaces a client that has closed itself.
		_, err = esdbconn.Call(ctx, c.client, func(client *esdb.Client, _ func() bool) (struct{}, error) {
			return struct{}{}, c.create(ctx, client, s)
		})
		if esdbconn.IsClosed(err) {
			c.log.Info().Str("stream", s.Stream).Str("group", s.Group).
				Msg("the source client closed itself after a failed discovery; retrying with a new one")
		}
		if err == nil {
			r, err = c.open(ctx, s)
		}
	}
	if err != nil {
		switch {
		case errors.Is(err, errNotFound):
			return nil, fmt.Errorf("%w: subscription group %q on stream %q does not exist on the source; create it, or set DITTO_CREATE_SUBSCRIPTIONS=true: %v", ErrFatal, s.Group, s.Stream, err)
		case errors.Is(err, errUnauthenticated):
			return nil, fmt.Errorf("%w: the source rejected the credentials of DITTO_SOURCE_CONNECTION_STRING: %v", ErrFatal, err)
		case errors.Is(err, errAccessDenied):
			return nil, fmt.Errorf("%w: access to subscription %s:%s denied by the source: %v", ErrFatal, s.Stream, s.Group, err)
		}
		return nil, fmt.Errorf("subscribing to %s:%s: %w", s.Stream, s.Group, err)
	}
	cn := &conn{r: r}
	c.mu.Lock()
	c.conns[cn] = struct{}{}
	c.mu.Unlock()
	return cn, nil
}

// open starts one read on the leader connection, dropping the connection
// if the read failed in a way that says the leader may have moved.
func (c *Consumer) open(ctx context.Context, s *Subscription) (*reader, error) {
	conn, err := c.leader.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("connecting to the source: %w", err)
	}
	// The read lives on connCtx, not ctx: after a stop it must stay open
	// until in-flight events are acked.
	r, err := openRead(c.connCtx, conn, s, c.opts.BufferSize, c.timeout)
	if err != nil {
		c.dropAfter(conn, err)
	}
	return r, err
}

// dropAfter drops conn, which every read of this consumer shares, after a
// read on it failed because the node is not the leader (the next dial goes
// to the one it named), is unreachable, or did not confirm in time (the
// next dial discovers the leader again). Other failures, such as the source
// dropping one subscription, leave the connection to the other reads.
func (c *Consumer) dropAfter(conn *grpc.ClientConn, err error) {
	var nl *notLeader
	switch {
	case errors.As(err, &nl):
		c.leader.Drop(conn, nl.leader)
	case errors.Is(err, errNoConfirmation), status.Code(err) == codes.Unavailable:
		c.leader.Drop(conn, "")
	}
}

// create creates the group with the settings ditto needs: links resolved,
// Pinned (a stream's events stay on one consumer), from the start.
func (c *Consumer) create(ctx context.Context, client *esdb.Client, s *Subscription) error {
	settings := esdb.SubscriptionSettingsDefault()
	settings.ResolveLinkTos = true
	settings.ConsumerStrategyName = esdb.ConsumerStrategyPinned
	err := client.CreatePersistentSubscription(ctx, s.Stream, s.Group, esdb.PersistentStreamSubscriptionOptions{
		Settings: &settings, StartFrom: esdb.Start{},
	})
	if err != nil && code(err) != esdb.ErrorCodeResourceAlreadyExists {
		return fmt.Errorf("creating subscription group %s:%s: %w", s.Stream, s.Group, err)
	}
	c.log.Info().Str("stream", s.Stream).Str("group", s.Group).Msg("created subscription group (resolve links, Pinned, from start)")
	return nil
}

// receive forwards events until the read ends or ctx ends. It reports
// whether any event arrived (a healthy connection resets the backoff).
//
// Reading takes no context of its own (the read lives on connCtx), so a
// reader goroutine hands events on while this loop waits for ctx. When ctx
// ends the connection stays open, so that in-flight events can still be
// acked, until Close.
func (c *Consumer) receive(ctx context.Context, s *Subscription, cn *conn, out chan<- *Delivery) bool {
	var received atomic.Bool
	ended := make(chan error, 1)
	go func() {
		for {
			m, err := cn.r.recv()
			if err != nil {
				ended <- err
				return
			}
			if m.Event == nil {
				continue
			}
			orig := m.Event.OriginalEvent()
			if orig == nil {
				// Nothing to write and no id to ack it by.
				c.log.Error().Str("stream", s.Stream).Str("group", s.Group).Msg("the source delivered a message with no record; ignored")
				continue
			}
			received.Store(true)
			s.Metrics.Received.Inc()
			d := &Delivery{Event: m.Event, RetryCount: m.RetryCount, Sub: s, conn: cn, id: orig.EventID, number: orig.EventNumber}
			// A select on both channels locks both for every event: look
			// at ctx and try the send on their own first, each costing
			// next to nothing when it cannot go ahead.
			select {
			case <-ctx.Done():
				return
			default:
			}
			select {
			case out <- d:
				continue
			default:
			}
			select {
			case out <- d:
			case <-ctx.Done():
				// Not acked: the source redelivers it once this
				// connection closes.
				return
			}
		}
	}()
	select {
	case err := <-ended:
		c.forget(cn)
		c.dropAfter(cn.r.conn, err)
		c.log.Warn().Err(err).Str("stream", s.Stream).Str("group", s.Group).Msg("subscription dropped; reconnecting")
	case <-ctx.Done():
	}
	return received.Load()
}

func (c *Consumer) forget(cn *conn) {
	c.mu.Lock()
	delete(c.conns, cn)
	c.mu.Unlock()
	cn.close()
}

// Close closes every connection. Events not acked by then are redelivered by
// the source to other consumers or on the next start.
func (c *Consumer) Close() {
	c.mu.Lock()
	conns := c.conns
	c.conns = map[*conn]struct{}{}
	c.mu.Unlock()
	for cn := range conns {
		cn.close()
	}
	c.cancelConns()
	c.leader.Close()
	c.client.Close()
}

// Ack acknowledges deliveries, grouped into one message per connection. A
// connection that has dropped cannot ack; its events are redelivered and the
// replicator writes them again idempotently.
func Ack(ds []*Delivery) error {
	return each(ds, pbwire.Settle{})
}

// Nack hands deliveries back to the source with action and reason (made
// valid UTF-8, which the message needs, so that a nack always goes out).
func Nack(ds []*Delivery, action esdb.NackAction, reason string) error {
	return each(ds, pbwire.Settle{Nack: true, Action: persistent.ReadReq_Nack_Action(action), Reason: strings.ToValidUTF8(reason, "\uFFFD")})
}

// maxIDsPerMessage keeps ack messages well below gRPC message limits.
const maxIDsPerMessage = 2000

// each sends the ack or nack s for ds: one message per connection and per
// maxIDsPerMessage deliveries.
func each(ds []*Delivery, s pbwire.Settle) error {
	var errs []error
	for len(ds) > 0 {
		cn := ds[0].conn
		mine, rest := ds, ds[:0:0]
		if !oneMessage(ds) {
			mine = nil
			for _, d := range ds {
				if d.conn == cn && len(mine) < maxIDsPerMessage {
					mine = append(mine, d)
				} else {
					rest = append(rest, d)
				}
			}
		}
		s.IDs = eventIDs(mine)
		cn.mu.Lock()
		err := cn.r.settle(&s)
		cn.mu.Unlock()
		if err != nil {
			errs = append(errs, err)
		}
		ds = rest
	}
	return errors.Join(errs...)
}

// oneMessage reports whether ds go in one message: the usual case, a
// write's events all from one connection.
func oneMessage(ds []*Delivery) bool {
	if len(ds) > maxIDsPerMessage {
		return false
	}
	for _, d := range ds[1:] {
		if d.conn != ds[0].conn {
			return false
		}
	}
	return true
}

// eventIDs returns the ids of the original records of ds, as the source
// names them in acks.
func eventIDs(ds []*Delivery) []uuid.UUID {
	ids := make([]uuid.UUID, len(ds))
	for i, d := range ds {
		ids[i] = d.id
	}
	return ids
}

func code(err error) esdb.ErrorCode {
	var e *esdb.Error
	if errors.As(err, &e) {
		return e.Code()
	}
	return -1
}
