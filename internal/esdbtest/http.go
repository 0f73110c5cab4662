package esdbtest

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strconv"

	"github.com/google/uuid"
)

// The classic HTTP API subset: enough for health checks, plain writes and
// creating persistent subscriptions over HTTP.

// eventsContentType is the media type of a batch of events in the classic API.
const eventsContentType = "application/vnd.eventstore.events+json"

// httpAPI routes the HTTP endpoints. Path wildcards match percent-encoded
// segments and PathValue decodes them, so "a%2Fb" names stream "a/b".
func (s *Server) httpAPI(auth authenticator) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health/live", func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /streams/{stream}", s.httpAppend)
	mux.HandleFunc("PUT /subscriptions/{stream}/{group}", func(w http.ResponseWriter, r *http.Request) {
		s.ps.handleHTTPSubscription(w, r, r.PathValue("stream"), r.PathValue("group"))
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user, ok := auth.check(r.Header.Get("Authorization"))
		if !ok {
			w.Header().Set("WWW-Authenticate", `Basic realm="ES"`)
			http.Error(w, "Unauthorized", http.StatusUnauthorized)
			return
		}
		if user != "" {
			r = r.WithContext(withUser(r.Context(), user))
		}
		mux.ServeHTTP(w, r)
	})
}

// httpEvent is one element of an events+json body. data and metadata are
// kept as raw JSON.
type httpEvent struct {
	EventID   string          `json:"eventId"`
	EventType string          `json:"eventType"`
	Data      json.RawMessage `json:"data"`
	Metadata  json.RawMessage `json:"metadata"`
}

// httpAppend serves POST /streams/{stream}: 201 with a Location on success,
// 400 for a malformed request or a wrong expected version (then with
// ES-CurrentVersion, as the classic API does), 410 for a deleted stream.
func (s *Server) httpAppend(w http.ResponseWriter, r *http.Request) {
	stream := r.PathValue("stream")
	if stream == "" {
		http.Error(w, "stream name required", http.StatusBadRequest)
		return
	}
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != eventsContentType {
		http.Error(w, "Content-Type must be "+eventsContentType, http.StatusBadRequest)
		return
	}
	exp, err := parseExpectedVersion(r.Header.Get("ES-ExpectedVersion"))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, int64(s.opts.MaxAppendSize)+(1<<20)))
	if err != nil {
		http.Error(w, "read body: "+err.Error(), http.StatusBadRequest)
		return
	}
	var batch []httpEvent
	if err := json.Unmarshal(body, &batch); err != nil {
		http.Error(w, "body must be a JSON array of events: "+err.Error(), http.StatusBadRequest)
		return
	}
	events := make([]ProposedEvent, 0, len(batch))
	total := 0
	for i, e := range batch {
		id, err := uuid.Parse(e.EventID)
		if err != nil {
			http.Error(w, fmt.Sprintf("event %d: invalid eventId", i), http.StatusBadRequest)
			return
		}
		if e.EventType == "" {
			http.Error(w, fmt.Sprintf("event %d: eventType required", i), http.StatusBadRequest)
			return
		}
		size := len(e.Data) + len(e.Metadata) + 2*utf16Len(e.EventType)
		if s.opts.MaxAppendEventSize > 0 && size > s.opts.MaxAppendEventSize {
			http.Error(w, fmt.Sprintf("Event %s exceeds Maximum Append Event Size of %d.", id, s.opts.MaxAppendEventSize), http.StatusBadRequest)
			return
		}
		total += size
		if total > s.opts.MaxAppendSize {
			http.Error(w, fmt.Sprintf("Maximum Append Size of %d Exceeded.", s.opts.MaxAppendSize), http.StatusBadRequest)
			return
		}
		events = append(events, ProposedEvent{ID: id, Type: e.EventType, IsJSON: true, Data: e.Data, Metadata: e.Metadata})
	}
	res, err := s.store.Append(stream, exp, events)
	var wev *WrongExpectedVersionError
	var del *StreamDeletedError
	switch {
	case errors.As(err, &wev):
		w.Header().Set("ES-CurrentVersion", strconv.FormatInt(wev.Current, 10))
		http.Error(w, "Wrong expected EventNumber", http.StatusBadRequest)
		return
	case errors.As(err, &del):
		http.Error(w, "Stream deleted", http.StatusGone)
		return
	case err != nil:
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	first := res.CurrentRevision - int64(len(events)) + 1
	w.Header().Set("Location", "/streams/"+url.PathEscape(stream)+"/"+strconv.FormatInt(max(first, 0), 10))
	w.WriteHeader(http.StatusCreated)
}

// parseExpectedVersion reads ES-ExpectedVersion: -2 any (the default), -1
// no stream, -4 stream exists, n ≥ 0 a revision.
func parseExpectedVersion(v string) (Expected, error) {
	if v == "" {
		return Expected{Kind: ExpectAny}, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	switch {
	case err != nil:
		return Expected{}, fmt.Errorf("invalid ES-ExpectedVersion %q", v)
	case n == -2:
		return Expected{Kind: ExpectAny}, nil
	case n == -1:
		return Expected{Kind: ExpectNoStream}, nil
	case n == -4:
		return Expected{Kind: ExpectStreamExists}, nil
	case n >= 0:
		return Expected{Kind: ExpectRevision, Revision: uint64(n)}, nil
	}
	return Expected{}, fmt.Errorf("invalid ES-ExpectedVersion %q", v)
}
