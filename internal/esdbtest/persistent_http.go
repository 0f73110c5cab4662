package esdbtest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
)

// httpSubscriptionSettings is the JSON body of the classic HTTP API's
// PUT /subscriptions/{stream}/{group}. Absent fields take the HTTP API's own
// defaults (the server's SubscriptionConfigData), which differ from the gRPC
// client's: start 0, message timeout 10 s, checkpoint after 1 s, max
// checkpoint count 500, max subscribers 10.
type httpSubscriptionSettings struct {
	ResolveLinktos              *bool   `json:"resolveLinktos"`
	StartFrom                   *int64  `json:"startFrom"`
	NamedConsumerStrategy       *string `json:"namedConsumerStrategy"`
	CheckPointAfterMilliseconds *int32  `json:"checkPointAfterMilliseconds"`
	MessageTimeoutMilliseconds  *int32  `json:"messageTimeoutMilliseconds"`
	MaxRetryCount               *int32  `json:"maxRetryCount"`
	LiveBufferSize              *int32  `json:"liveBufferSize"`
	ReadBatchSize               *int32  `json:"readBatchSize"`
	BufferSize                  *int32  `json:"bufferSize"`
	MaxCheckPointCount          *int32  `json:"maxCheckPointCount"`
	MinCheckPointCount          *int32  `json:"minCheckPointCount"`
	MaxSubscriberCount          *int32  `json:"maxSubscriberCount"`
	ExtraStatistics             *bool   `json:"extraStatistics"`
}

// defaultPSSettings are the gRPC client's SubscriptionSettingsDefault values.
func defaultPSSettings(stream, group string) *psSettings {
	return &psSettings{
		Stream: stream, Group: group,
		StartRevision:      -1,
		MaxRetryCount:      10,
		MinCheckpointCount: 10,
		MaxCheckpointCount: 1000,
		LiveBufferSize:     500,
		ReadBatchSize:      20,
		HistoryBufferSize:  500,
		MessageTimeoutMs:   30000,
		CheckpointAfterMs:  2000,
		Strategy:           strategyRoundRobin,
	}
}

// httpDefaultPSSettings are the classic HTTP API's defaults.
func httpDefaultPSSettings(stream, group string) *psSettings {
	s := defaultPSSettings(stream, group)
	s.StartRevision = 0
	s.MessageTimeoutMs = 10000
	s.CheckpointAfterMs = 1000
	s.MaxCheckpointCount = 500
	s.MaxSubscriberCount = 10
	return s
}

// settingsFromHTTP decodes the PUT body over the defaults.
func settingsFromHTTP(body []byte, stream, group string) (*psSettings, error) {
	s := httpDefaultPSSettings(stream, group)
	if len(bytes.TrimSpace(body)) == 0 {
		return s, nil
	}
	var h httpSubscriptionSettings
	// Unknown fields (preferRoundRobin, startPosition...) are ignored, as
	// the real server's JSON binding does.
	if err := json.Unmarshal(body, &h); err != nil {
		return nil, fmt.Errorf("decode subscription settings: %w", err)
	}
	setB := func(dst *bool, v *bool) {
		if v != nil {
			*dst = *v
		}
	}
	setI := func(dst *int32, v *int32) {
		if v != nil {
			*dst = *v
		}
	}
	setB(&s.ResolveLinks, h.ResolveLinktos)
	setB(&s.ExtraStatistics, h.ExtraStatistics)
	if h.StartFrom != nil {
		s.StartRevision = *h.StartFrom
	}
	if h.NamedConsumerStrategy != nil {
		s.Strategy = *h.NamedConsumerStrategy
	}
	setI(&s.CheckpointAfterMs, h.CheckPointAfterMilliseconds)
	setI(&s.MessageTimeoutMs, h.MessageTimeoutMilliseconds)
	setI(&s.MaxRetryCount, h.MaxRetryCount)
	setI(&s.LiveBufferSize, h.LiveBufferSize)
	setI(&s.ReadBatchSize, h.ReadBatchSize)
	setI(&s.HistoryBufferSize, h.BufferSize)
	setI(&s.MaxCheckpointCount, h.MaxCheckPointCount)
	setI(&s.MinCheckpointCount, h.MinCheckPointCount)
	setI(&s.MaxSubscriberCount, h.MaxSubscriberCount)
	return s, nil
}

// handleHTTPSubscription serves PUT /subscriptions/{stream}/{group} (classic
// HTTP API: JSON settings body) by creating the subscription: 201 Created,
// 409 Conflict when it exists, 400 for a bad body or settings.
func (p *persistentService) handleHTTPSubscription(w http.ResponseWriter, r *http.Request, stream, group string) {
	if r.Method != http.MethodPut {
		w.Header().Set("Allow", http.MethodPut)
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		http.Error(w, "read body: "+err.Error(), http.StatusBadRequest)
		return
	}
	if stream == "" || group == "" || stream == allStream {
		http.Error(w, "a stream name (not $all) and a group name are required", http.StatusBadRequest)
		return
	}
	s, err := settingsFromHTTP(body, stream, group)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	st := p.create(s, userFromContext(r.Context()))
	switch {
	case st.err == nil:
		w.Header().Set("Location", "/subscriptions/"+stream+"/"+group)
		w.WriteHeader(http.StatusCreated)
	case st.trailer.Get("exception")[0] == "persistent-subscription-exists":
		http.Error(w, "subscription group already exists", http.StatusConflict)
	default:
		http.Error(w, st.trailer.Get("reason")[0], http.StatusBadRequest)
	}
}
