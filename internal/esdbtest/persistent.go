package esdbtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"sync"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/protos/persistent"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/shared"
	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/ditto-replicator/ditto/internal/pbwire/gen/persistentpb"
)

// psConfigStream holds the persisted subscription configuration: its last
// $PersistentConfig event lists every subscription (as on the real server),
// so a file-backed store restores them on restart.
const psConfigStream = "$persistentSubscriptionConfig"

// persistentService implements the PersistentSubscriptions gRPC service on
// top of the Store. Subscription configs, checkpoints and parked messages live
// in the store's system streams, so a file-backed store restores them.
//
// mu guards subs and seen only. It may be held while a subscription is
// stopped or started (the subscription goroutine never takes it), but never
// while waiting on a consumer.
type persistentService struct {
	persistent.UnimplementedPersistentSubscriptionsServer
	store  *Store
	leader string // Options.LeaderAddr: this node is a follower

	mu   sync.Mutex
	subs map[string]*psSub // by key "<stream>::<group>"
	seen map[string]bool   // streams that ever had a subscription (List for stream)
}

// psConfigDoc is the JSON of a $PersistentConfig event.
type psConfigDoc struct {
	Version   string        `json:"version"`
	Updated   time.Time     `json:"updated"`
	UpdatedBy string        `json:"updatedBy"`
	Entries   []*psSettings `json:"entries"`
}

// newPersistentService loads every persisted subscription from the store and
// starts them.
func newPersistentService(store *Store, leader string) (*persistentService, error) {
	p := &persistentService{store: store, leader: leader, subs: map[string]*psSub{}, seen: map[string]bool{}}
	if err := p.load(); err != nil {
		return nil, err
	}
	return p, nil
}

// load starts every subscription of the persisted config. Caller holds mu
// (or has exclusive access).
func (p *persistentService) load() error {
	recs, err := p.store.ReadStream(psConfigStream, -1, false, 1, false)
	if err != nil || len(recs) == 0 || recs[0].Event == nil {
		return nil // no config yet
	}
	var doc psConfigDoc
	if err := json.Unmarshal(recs[0].Event.Data, &doc); err != nil {
		return fmt.Errorf("load %s: %w", psConfigStream, err)
	}
	for _, s := range doc.Entries {
		if s.Filter != nil {
			if err := s.Filter.compile(); err != nil {
				return fmt.Errorf("load subscription %s: %w", s.key(), err)
			}
		}
		p.subs[s.key()] = newSub(p.store, s)
		p.seen[s.Stream] = true
	}
	return nil
}

// persist writes the current config. Caller holds mu.
func (p *persistentService) persist(user string) error {
	doc := psConfigDoc{Version: "2", Updated: time.Now().UTC(), UpdatedBy: user}
	for _, s := range p.subs {
		doc.Entries = append(doc.Entries, s.settings)
	}
	sort.Slice(doc.Entries, func(i, j int) bool { return doc.Entries[i].key() < doc.Entries[j].key() })
	data, err := json.Marshal(doc)
	if err != nil {
		return fmt.Errorf("encode subscription config: %w", err)
	}
	if _, err := p.store.Append(psConfigStream, Expected{Kind: ExpectAny}, []ProposedEvent{{
		ID: uuid.New(), Type: "$PersistentConfig", IsJSON: true, Data: data,
	}}); err != nil {
		return fmt.Errorf("write subscription config: %w", err)
	}
	return nil
}

// Close stops every subscription and drops its consumers.
func (p *persistentService) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, s := range p.subs {
		s.shutdown(true)
		delete(p.subs, k)
	}
}

func (p *persistentService) get(stream, group string) *psSub {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.subs[stream+"::"+group]
}

// create validates and starts a subscription; shared by gRPC and HTTP.
func (p *persistentService) create(s *psSettings, user string) psStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.subs[s.key()]; ok {
		return psExists(s.Stream, s.Group)
	}
	if err := s.validate(p.store.HeadPosition()); err != nil {
		return psFailed(s.Stream, s.Group, err)
	}
	sub := newSub(p.store, s)
	p.subs[s.key()] = sub
	if err := p.persist(user); err != nil {
		// Not persisted means not created: a restart would lose it.
		sub.shutdown(false)
		delete(p.subs, s.key())
		return psFailed(s.Stream, s.Group, err)
	}
	p.seen[s.Stream] = true
	return psStatus{}
}

// Create implements PersistentSubscriptions.Create.
func (p *persistentService) Create(ctx context.Context, req *persistent.CreateReq) (*persistent.CreateResp, error) {
	s, err := settingsFromCreate(req)
	if err != nil {
		return nil, psFailed(s.Stream, s.Group, err).unary(ctx)
	}
	if st := p.create(s, userFromContext(ctx)); st.err != nil {
		return nil, st.unary(ctx)
	}
	return &persistent.CreateResp{}, nil
}

// Update replaces the subscription: consumers are dropped and the new
// instance resumes from the stored checkpoint, else from the new start.
func (p *persistentService) Update(ctx context.Context, req *persistent.UpdateReq) (*persistent.UpdateResp, error) {
	s, err := settingsFromUpdate(req)
	if err != nil {
		return nil, psFailed(s.Stream, s.Group, err).unary(ctx)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	old, ok := p.subs[s.key()]
	if !ok {
		return nil, psNotFound(s.Stream, s.Group).unary(ctx)
	}
	if f := old.settings.Filter; f != nil {
		// $all keeps its old filter. Copy it: validate recompiles it while
		// the old subscription may still be reading its own.
		s.Filter = &psFilter{OnEventType: f.OnEventType, Regex: f.Regex, Prefixes: f.Prefixes}
	}
	if err := s.validate(p.store.HeadPosition()); err != nil {
		return nil, psFailed(s.Stream, s.Group, err).unary(ctx)
	}
	old.shutdown(true)
	p.subs[s.key()] = newSub(p.store, s)
	if err := p.persist(userFromContext(ctx)); err != nil {
		return nil, psFailed(s.Stream, s.Group, err).unary(ctx)
	}
	return &persistent.UpdateResp{}, nil
}

// Delete drops the consumers and soft-deletes the checkpoint and parked
// streams, so that re-creating the group starts afresh.
func (p *persistentService) Delete(ctx context.Context, req *persistent.DeleteReq) (*persistent.DeleteResp, error) {
	o := req.GetOptions()
	_, all := o.GetStreamOption().(*persistent.DeleteReq_Options_All)
	stream := streamOf(o.GetStreamIdentifier(), all)
	group := o.GetGroupName()
	p.mu.Lock()
	defer p.mu.Unlock()
	s, ok := p.subs[stream+"::"+group]
	if !ok {
		return nil, psNotFound(stream, group).unary(ctx)
	}
	s.shutdown(false)
	delete(p.subs, s.settings.key())
	// Never-written streams answer wrong-expected-version: nothing to delete.
	_, _ = p.store.Delete(s.settings.checkpointStream(), Expected{Kind: ExpectAny})
	_, _ = p.store.Delete(s.settings.parkedStream(), Expected{Kind: ExpectAny})
	if err := p.persist(userFromContext(ctx)); err != nil {
		return nil, psFailed(stream, group, err).unary(ctx)
	}
	return &persistent.DeleteResp{}, nil
}

// Read is the bidirectional consumer RPC. The handler goroutine is the only
// sender on the stream; a helper goroutine receives acks and nacks and
// posts them to the subscription goroutine. After the confirmation only
// `event` messages are sent (§0 hard requirement 3).
func (p *persistentService) Read(stream persistent.PersistentSubscriptions_ReadServer) error {
	ctx := stream.Context()
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	o := first.GetOptions()
	if o == nil {
		return status.Error(codes.InvalidArgument, "the first message must carry the subscription options")
	}
	_, all := o.GetStreamOption().(*persistent.ReadReq_Options_All)
	streamName := streamOf(o.GetStreamIdentifier(), all)
	group := o.GetGroupName()
	if o.GetBufferSize() < 1 {
		return status.Errorf(codes.InvalidArgument, "buffer size must be at least 1, got %d", o.GetBufferSize())
	}
	_, stringIDs := o.GetUuidOption().GetContent().(*persistent.ReadReq_Options_UUIDOption_String_)
	if p.leader != "" {
		// Subscriptions run on the leader only: a follower answers the
		// read with the leader's address (PersistentSubscriptions.Read.cs,
		// NotHandled), whatever requires-leader says.
		return notLeader(func(md metadata.MD) { stream.SetTrailer(md) }, p.leader)
	}

	sub := p.get(streamName, group)
	if sub == nil {
		return psNotFound(streamName, group).streaming(stream)
	}
	c, err := sub.connect(userFromContext(ctx), int(o.GetBufferSize()))
	switch {
	case errors.Is(err, errMaxSubscribers):
		return psMaxSubscribers(streamName, group).streaming(stream)
	case err != nil:
		return psNotFound(streamName, group).streaming(stream)
	}
	disconnect := func() { sub.post(func() { sub.disconnect(c) }) }

	if err := stream.Send(&persistent.ReadResp{Content: &persistent.ReadResp_SubscriptionConfirmation_{
		SubscriptionConfirmation: &persistent.ReadResp_SubscriptionConfirmation{SubscriptionId: sub.settings.key()},
	}}); err != nil {
		disconnect()
		return err
	}

	recvErr := make(chan error, 1)
	go func() {
		// Acks and nacks are received as the generated messages (package
		// pbwire), without the protobuf runtime's reflection.
		for {
			req := new(persistentpb.ReadReq)
			if err := stream.RecvMsg(req); err != nil {
				recvErr <- err
				return
			}
			switch x := req.GetContent().(type) {
			case *persistentpb.ReadReq_Ack_:
				ids := psUUIDsFromWire(x.Ack.GetIds())
				sub.post(func() { sub.ack(ids) })
			case *persistentpb.ReadReq_Nack_:
				ids := psUUIDsFromWire(x.Nack.GetIds())
				action, reason := nackAction(persistent.ReadReq_Nack_Action(x.Nack.GetAction())), x.Nack.GetReason()
				sub.post(func() { sub.nack(ids, action, reason) })
			}
		}
	}()

	var spare []sendItem
	var wire psWire // reused header only: each delivery has its own bytes
	var arena psArena
	for {
		select {
		case <-c.notify:
			items := c.take(spare)
			for i, it := range items {
				var err error
				if raw, ok := psDelivery(&arena, it.ev, it.retry, stringIDs); ok {
					wire = arena.wire(raw)
					err = stream.SendMsg(&wire)
				} else {
					err = stream.Send(psEventResp(it.ev, it.retry, stringIDs))
				}
				if err != nil {
					disconnect()
					return err
				}
				items[i] = sendItem{}
			}
			spare = items
		case <-c.dropped:
			return psDropped(streamName, group).streaming(stream)
		case err := <-recvErr:
			disconnect()
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		case <-ctx.Done():
			disconnect()
			return status.FromContextError(ctx.Err()).Err()
		}
	}
}

// info asks the subscription goroutine for its SubscriptionInfo.
func (s *psSub) info() (*persistent.SubscriptionInfo, error) {
	var out *persistent.SubscriptionInfo
	err := s.call(func() { out = s.buildInfo() })
	return out, err
}

// buildInfo runs on the subscription goroutine.
func (s *psSub) buildInfo() *persistent.SubscriptionInfo {
	st := s.settings
	status := "Behind"
	if s.caughtUp {
		status = "Live"
	}
	if s.replay != nil {
		status += ", ReplayingParkedMessages"
	}
	info := &persistent.SubscriptionInfo{
		EventSource:                 st.Stream,
		GroupName:                   st.Group,
		Status:                      status,
		ResolveLinkTos:              st.ResolveLinks,
		StartFrom:                   st.startFromString(),
		MessageTimeoutMilliseconds:  st.MessageTimeoutMs,
		ExtraStatistics:             st.ExtraStatistics,
		MaxRetryCount:               st.MaxRetryCount,
		LiveBufferSize:              st.LiveBufferSize,
		BufferSize:                  st.HistoryBufferSize,
		ReadBatchSize:               st.ReadBatchSize,
		CheckPointAfterMilliseconds: st.CheckpointAfterMs,
		MinCheckPointCount:          st.MinCheckpointCount,
		MaxCheckPointCount:          st.MaxCheckpointCount,
		ReadBufferCount:             int32(len(s.buffer) - s.head),
		RetryBufferCount:            int32(len(s.retry)),
		TotalInFlightMessages:       int32(s.outstanding.len()),
		OutstandingMessagesCount:    int32(s.outstanding.len()),
		NamedConsumerStrategy:       st.Strategy,
		MaxSubscriberCount:          st.MaxSubscriberCount,
		ParkedMessageCount:          s.parkedCount(),
		TotalItems:                  s.totalItems,
	}
	if s.hasCheckpoint {
		info.LastCheckpointedEventPosition = s.formatPosition(s.lastCheckpoint)
	}
	if s.lastKnown >= 0 {
		info.LastKnownEventPosition = s.formatPosition(s.lastKnown)
	}
	for _, c := range s.consumers {
		info.Connections = append(info.Connections, &persistent.SubscriptionInfo_ConnectionInfo{
			Username:         c.user,
			AvailableSlots:   int32(c.bufferSize - c.inFlight),
			InFlightMessages: int32(c.inFlight),
			TotalItems:       c.total,
			ConnectionName:   "<unknown>",
		})
	}
	return info
}

// GetInfo implements PersistentSubscriptions.GetInfo.
func (p *persistentService) GetInfo(ctx context.Context, req *persistent.GetInfoReq) (*persistent.GetInfoResp, error) {
	o := req.GetOptions()
	_, all := o.GetStreamOption().(*persistent.GetInfoReq_Options_All)
	stream := streamOf(o.GetStreamIdentifier(), all)
	group := o.GetGroupName()
	sub := p.get(stream, group)
	if sub == nil {
		return nil, psNotFound(stream, group).unary(ctx)
	}
	info, err := sub.info()
	if err != nil {
		return nil, psNotFound(stream, group).unary(ctx)
	}
	return &persistent.GetInfoResp{SubscriptionInfo: info}, nil
}

// List implements PersistentSubscriptions.List: every subscription, or
// those of one stream (NotFound if that stream never had one).
func (p *persistentService) List(ctx context.Context, req *persistent.ListReq) (*persistent.ListResp, error) {
	filter, byStream := "", false
	if fs, ok := req.GetOptions().GetListOption().(*persistent.ListReq_Options_ListForStream); ok {
		byStream = true
		_, all := fs.ListForStream.GetStreamOption().(*persistent.ListReq_StreamOption_All)
		filter = streamOf(fs.ListForStream.GetStream(), all)
	}
	p.mu.Lock()
	if byStream && !p.seen[filter] {
		p.mu.Unlock()
		return nil, psNotFound(filter, "").unary(ctx)
	}
	var subs []*psSub
	for _, s := range p.subs {
		if !byStream || s.settings.Stream == filter {
			subs = append(subs, s)
		}
	}
	p.mu.Unlock()
	sort.Slice(subs, func(i, j int) bool { return subs[i].settings.key() < subs[j].settings.key() })
	resp := &persistent.ListResp{}
	for _, s := range subs {
		if info, err := s.info(); err == nil {
			resp.Subscriptions = append(resp.Subscriptions, info)
		}
	}
	return resp, nil
}

// ReplayParked implements PersistentSubscriptions.ReplayParked.
func (p *persistentService) ReplayParked(ctx context.Context, req *persistent.ReplayParkedReq) (*persistent.ReplayParkedResp, error) {
	o := req.GetOptions()
	_, all := o.GetStreamOption().(*persistent.ReplayParkedReq_Options_All)
	stream := streamOf(o.GetStreamIdentifier(), all)
	group := o.GetGroupName()
	sub := p.get(stream, group)
	if sub == nil {
		return nil, psNotFound(stream, group).unary(ctx)
	}
	stopAt := int64(-1)
	if x, ok := o.GetStopAtOption().(*persistent.ReplayParkedReq_Options_StopAt); ok {
		stopAt = x.StopAt
	}
	var replayErr error
	if err := sub.call(func() { replayErr = sub.startReplay(stopAt) }); err != nil {
		return nil, psNotFound(stream, group).unary(ctx)
	}
	if replayErr != nil {
		return nil, psFailed(stream, group, replayErr).unary(ctx)
	}
	return &persistent.ReplayParkedResp{}, nil
}

// RestartSubsystem drops every consumer and reloads every subscription from
// the persisted config and checkpoints.
func (p *persistentService) RestartSubsystem(ctx context.Context, _ *shared.Empty) (*shared.Empty, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, s := range p.subs {
		s.shutdown(true)
		delete(p.subs, k)
	}
	if err := p.load(); err != nil {
		return nil, psFailed("", "", err).unary(ctx)
	}
	return &shared.Empty{}, nil
}
