package esdbtest

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/EventStore/EventStore-Client-Go/v4/protos/persistent"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/shared"
)

// allStream is the name persistent subscriptions use for the whole log.
const allStream = "$all"

// Consumer strategy names (§5 Create: these four are the only valid ones).
const (
	strategyRoundRobin          = "RoundRobin"
	strategyDispatchToSingle    = "DispatchToSingle"
	strategyPinned              = "Pinned"
	strategyPinnedByCorrelation = "PinnedByCorrelation"
)

// psFilter is the filter of a $all subscription. Regex wins over prefixes,
// as on the real server; the window and checkpoint multiplier the client
// sends are ignored (§5 Create).
type psFilter struct {
	OnEventType bool     `json:"onEventType"`
	Regex       string   `json:"regex,omitempty"`
	Prefixes    []string `json:"prefixes,omitempty"`

	re *regexp.Regexp // compiled Regex; nil when Regex is empty
}

// compile prepares the regular expression. .NET and Go regex syntax agree on
// everything the client tests use.
func (f *psFilter) compile() error {
	if f.Regex == "" {
		return nil
	}
	re, err := regexp.Compile(f.Regex)
	if err != nil {
		return fmt.Errorf("invalid filter regex %q: %w", f.Regex, err)
	}
	f.re = re
	return nil
}

// match reports whether a record of the given stream and type passes.
func (f *psFilter) match(stream, typ string) bool {
	s := stream
	if f.OnEventType {
		s = typ
	}
	if f.re != nil {
		return f.re.MatchString(s)
	}
	for _, p := range f.Prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// psSettings is one subscription's configuration, exactly as the client sent
// it: the gRPC path applies no server-side defaults (§5 Create). It is also
// the JSON form persisted in $persistentSubscriptionConfig.
type psSettings struct {
	Stream string `json:"stream"` // allStream for $all
	Group  string `json:"group"`

	// StartRevision is the start of a stream subscription: 0 = start,
	// -1 = end, R = from R inclusive.
	StartRevision int64 `json:"startRevision"`
	// StartCommit/StartPrepare is the start of a $all subscription:
	// 0/0 = start, -1/-1 = end.
	StartCommit  int64     `json:"startCommit"`
	StartPrepare int64     `json:"startPrepare"`
	Filter       *psFilter `json:"filter,omitempty"`

	ResolveLinks       bool   `json:"resolveLinks"`
	ExtraStatistics    bool   `json:"extraStatistics"`
	MaxRetryCount      int32  `json:"maxRetryCount"`
	MinCheckpointCount int32  `json:"minCheckpointCount"`
	MaxCheckpointCount int32  `json:"maxCheckpointCount"`
	MaxSubscriberCount int32  `json:"maxSubscriberCount"`
	LiveBufferSize     int32  `json:"liveBufferSize"`
	ReadBatchSize      int32  `json:"readBatchSize"`
	HistoryBufferSize  int32  `json:"historyBufferSize"`
	MessageTimeoutMs   int32  `json:"messageTimeoutMs"`
	CheckpointAfterMs  int32  `json:"checkpointAfterMs"`
	Strategy           string `json:"strategy"`
}

// key is the subscription key and id, "<stream>::<group>".
func (s *psSettings) key() string { return s.Stream + "::" + s.Group }

func (s *psSettings) isAll() bool { return s.Stream == allStream }

// checkpointStream and parkedStream name the subscription's system streams.
func (s *psSettings) checkpointStream() string {
	return "$persistentsubscription-" + s.key() + "-checkpoint"
}

func (s *psSettings) parkedStream() string {
	return "$persistentsubscription-" + s.key() + "-parked"
}

// batchSize is the history read batch: 0 means 20, at most 100 (§5).
func (s *psSettings) batchSize() int {
	switch {
	case s.ReadBatchSize <= 0:
		return 20
	case s.ReadBatchSize > 100:
		return 100
	}
	return int(s.ReadBatchSize)
}

// bufferCap bounds the messages read ahead of delivery: the history buffer
// plus the live buffer, at least one read batch.
func (s *psSettings) bufferCap() int {
	n := int(s.HistoryBufferSize) + int(s.LiveBufferSize)
	if n < s.batchSize() {
		n = s.batchSize()
	}
	return n
}

// startFromString renders the start as GetInfo reports it; the client
// parses it with ParseStreamPosition, so it must never be empty.
func (s *psSettings) startFromString() string {
	if s.isAll() {
		return fmt.Sprintf("C:%d/P:%d", s.StartCommit, s.StartPrepare)
	}
	return strconv.FormatInt(s.StartRevision, 10)
}

// validStrategy reports whether name is one of the four strategies.
func validStrategy(name string) bool {
	switch name {
	case strategyRoundRobin, strategyDispatchToSingle, strategyPinned, strategyPinnedByCorrelation:
		return true
	}
	return false
}

// validate applies the server's Create/Update failure rules (§5). head is
// the log's last position, for the $all start check. The returned reason
// goes into the `reason` trailer of persistent-subscription-failed.
func (s *psSettings) validate(head uint64) error {
	switch {
	case s.Stream == "":
		return fmt.Errorf("stream name must not be empty")
	case !validStrategy(s.Strategy):
		return fmt.Errorf("unknown consumer strategy %q", s.Strategy)
	case s.ReadBatchSize >= s.HistoryBufferSize:
		return fmt.Errorf("read batch size (%d) must be less than the history buffer size (%d)", s.ReadBatchSize, s.HistoryBufferSize)
	}
	if s.isAll() {
		c, p := s.StartCommit, s.StartPrepare
		switch {
		case (c < 0) != (p < 0):
			return fmt.Errorf("invalid start position C:%d/P:%d", c, p)
		case c >= 0 && p > c:
			return fmt.Errorf("prepare position %d is after commit position %d", p, c)
		case c >= 0 && uint64(c) > head:
			return fmt.Errorf("commit position %d is after the last position %d", c, head)
		}
	} else if s.StartRevision < -1 {
		return fmt.Errorf("invalid start revision %d", s.StartRevision)
	}
	if s.Filter != nil {
		if err := s.Filter.compile(); err != nil {
			return err
		}
	}
	return nil
}

// settingsFromCreate converts a CreateReq. The returned stream/group are
// set even when err != nil, for the error trailers.
func settingsFromCreate(req *persistent.CreateReq) (*psSettings, error) {
	o := req.GetOptions()
	s := &psSettings{Group: o.GetGroupName()}
	switch opt := o.GetStreamOption().(type) {
	case *persistent.CreateReq_Options_Stream:
		s.Stream = string(opt.Stream.GetStreamIdentifier().GetStreamName())
		if s.Stream == allStream {
			return s, fmt.Errorf("use the all option to subscribe to $all")
		}
		switch r := opt.Stream.GetRevisionOption().(type) {
		case *persistent.CreateReq_StreamOptions_Revision:
			s.StartRevision = int64(r.Revision)
		case *persistent.CreateReq_StreamOptions_End:
			s.StartRevision = -1
		}
	case *persistent.CreateReq_Options_All:
		s.Stream = allStream
		s.StartCommit, s.StartPrepare = allStart(opt.All.GetAllOption())
		if f, ok := opt.All.GetFilterOption().(*persistent.CreateReq_AllOptions_Filter); ok {
			s.Filter = filterFromProto(f.Filter)
		}
	default:
		// Old clients: the deprecated identifier plus settings.revision.
		s.Stream = string(o.GetStreamIdentifier().GetStreamName())
		if s.Stream == allStream {
			return s, fmt.Errorf("use the all option to subscribe to $all")
		}
		s.StartRevision = int64(o.GetSettings().GetRevision())
	}
	st := o.GetSettings()
	s.setCommon(st)
	switch t := st.GetMessageTimeout().(type) {
	case *persistent.CreateReq_Settings_MessageTimeoutMs:
		s.MessageTimeoutMs = t.MessageTimeoutMs
	case *persistent.CreateReq_Settings_MessageTimeoutTicks:
		s.MessageTimeoutMs = int32(t.MessageTimeoutTicks / 10000)
	}
	switch t := st.GetCheckpointAfter().(type) {
	case *persistent.CreateReq_Settings_CheckpointAfterMs:
		s.CheckpointAfterMs = t.CheckpointAfterMs
	case *persistent.CreateReq_Settings_CheckpointAfterTicks:
		s.CheckpointAfterMs = int32(t.CheckpointAfterTicks / 10000)
	}
	// The string wins when set; otherwise the deprecated enum's name.
	s.Strategy = st.GetConsumerStrategy()
	if s.Strategy == "" {
		s.Strategy = st.GetNamedConsumerStrategy().String()
	}
	return s, nil
}

// settingsFromUpdate converts an UpdateReq. $all keeps its old filter, which
// the caller copies over.
func settingsFromUpdate(req *persistent.UpdateReq) (*psSettings, error) {
	o := req.GetOptions()
	s := &psSettings{Group: o.GetGroupName()}
	switch opt := o.GetStreamOption().(type) {
	case *persistent.UpdateReq_Options_Stream:
		s.Stream = string(opt.Stream.GetStreamIdentifier().GetStreamName())
		if s.Stream == allStream {
			return s, fmt.Errorf("use the all option to subscribe to $all")
		}
		switch r := opt.Stream.GetRevisionOption().(type) {
		case *persistent.UpdateReq_StreamOptions_Revision:
			s.StartRevision = int64(r.Revision)
		case *persistent.UpdateReq_StreamOptions_End:
			s.StartRevision = -1
		}
	case *persistent.UpdateReq_Options_All:
		s.Stream = allStream
		switch a := opt.All.GetAllOption().(type) {
		case *persistent.UpdateReq_AllOptions_Position:
			s.StartCommit, s.StartPrepare = int64(a.Position.GetCommitPosition()), int64(a.Position.GetPreparePosition())
		case *persistent.UpdateReq_AllOptions_End:
			s.StartCommit, s.StartPrepare = -1, -1
		}
	default:
		s.Stream = string(o.GetStreamIdentifier().GetStreamName())
		s.StartRevision = int64(o.GetSettings().GetRevision())
	}
	st := o.GetSettings()
	s.setCommon(st)
	switch t := st.GetMessageTimeout().(type) {
	case *persistent.UpdateReq_Settings_MessageTimeoutMs:
		s.MessageTimeoutMs = t.MessageTimeoutMs
	case *persistent.UpdateReq_Settings_MessageTimeoutTicks:
		s.MessageTimeoutMs = int32(t.MessageTimeoutTicks / 10000)
	}
	switch t := st.GetCheckpointAfter().(type) {
	case *persistent.UpdateReq_Settings_CheckpointAfterMs:
		s.CheckpointAfterMs = t.CheckpointAfterMs
	case *persistent.UpdateReq_Settings_CheckpointAfterTicks:
		s.CheckpointAfterMs = int32(t.CheckpointAfterTicks / 10000)
	}
	s.Strategy = st.GetNamedConsumerStrategy().String()
	return s, nil
}

// allStart decodes a $all start option; MaxUint64 positions become -1.
func allStart(opt any) (commit, prepare int64) {
	switch a := opt.(type) {
	case *persistent.CreateReq_AllOptions_Position:
		return int64(a.Position.GetCommitPosition()), int64(a.Position.GetPreparePosition())
	case *persistent.CreateReq_AllOptions_End:
		return -1, -1
	}
	return 0, 0
}

func filterFromProto(f *persistent.CreateReq_AllOptions_FilterOptions) *psFilter {
	var e *persistent.CreateReq_AllOptions_FilterOptions_Expression
	out := &psFilter{}
	switch x := f.GetFilter().(type) {
	case *persistent.CreateReq_AllOptions_FilterOptions_StreamIdentifier:
		e = x.StreamIdentifier
	case *persistent.CreateReq_AllOptions_FilterOptions_EventType:
		e = x.EventType
		out.OnEventType = true
	}
	out.Regex = e.GetRegex()
	out.Prefixes = append([]string(nil), e.GetPrefix()...)
	return out
}

// streamOf names the stream a request addresses: the identifier, or $all.
func streamOf(id *shared.StreamIdentifier, all bool) string {
	if all {
		return allStream
	}
	return string(id.GetStreamName())
}

// wireSettings is what CreateReq.Settings and UpdateReq.Settings share.
type wireSettings interface {
	GetResolveLinks() bool
	GetExtraStatistics() bool
	GetMaxRetryCount() int32
	GetMinCheckpointCount() int32
	GetMaxCheckpointCount() int32
	GetMaxSubscriberCount() int32
	GetLiveBufferSize() int32
	GetReadBatchSize() int32
	GetHistoryBufferSize() int32
}

// setCommon copies the settings Create and Update carry alike.
func (s *psSettings) setCommon(st wireSettings) {
	s.ResolveLinks = st.GetResolveLinks()
	s.ExtraStatistics = st.GetExtraStatistics()
	s.MaxRetryCount = st.GetMaxRetryCount()
	s.MinCheckpointCount = st.GetMinCheckpointCount()
	s.MaxCheckpointCount = st.GetMaxCheckpointCount()
	s.MaxSubscriberCount = st.GetMaxSubscriberCount()
	s.LiveBufferSize = st.GetLiveBufferSize()
	s.ReadBatchSize = st.GetReadBatchSize()
	s.HistoryBufferSize = st.GetHistoryBufferSize()
}
