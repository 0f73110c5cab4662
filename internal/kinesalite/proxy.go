package kinesalite

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
)

// Proxy is an HTTP proxy on 127.0.0.1 in front of a Kinesis endpoint. It
// logs every PutRecords call, and answers calls with the faults its Rule
// decides, which kinesalite never produces: whole-call throttling, records
// rejected one by one (FailedRecordCount > 0), refused credentials.
type Proxy struct {
	ln     net.Listener
	srv    *http.Server
	target string // http://host:port
	client *http.Client

	mu      sync.Mutex
	rule    Rule
	refuse  *Refusal
	calls   []Call
	paused  chan struct{} // closed on Resume; nil when not paused
	waiting int           // PutRecords calls held by Pause
}

// Entry is one record of a PutRecords call.
type Entry struct {
	PartitionKey string
	Data         []byte
}

// Call is one PutRecords call the proxy received, and what it did with it.
type Call struct {
	Records []Entry
	Fault   Fault
}

// Fault is what the proxy does with one PutRecords call.
type Fault struct {
	// Call, if set, answers the whole call with HTTP 400 and this error
	// type (Throttle for throttling); nothing is written.
	Call string
	// Reject maps record indexes to the ErrorCode they are rejected with;
	// the other records are forwarded and written.
	Reject map[int]string
}

// Throttle is the error type of a throttled call.
const Throttle = "ProvisionedThroughputExceededException"

// Rule decides the fault for the n-th PutRecords call (from 0). It runs
// with the proxy's lock held, one call at a time.
type Rule func(n int, records []Entry) Fault

// Refusal answers every request, of any operation, with an error.
type Refusal struct {
	Status  int    // HTTP status, e.g. 400
	Type    string // __type, e.g. UnrecognizedClientException
	Message string
}

// StartProxy starts a proxy to target, an http://127.0.0.1:port endpoint.
func StartProxy(target string) (*Proxy, error) {
	if !strings.HasPrefix(target, "http://127.0.0.1:") && !strings.HasPrefix(target, "http://localhost:") {
		return nil, fmt.Errorf("proxy target %q is not a loopback http endpoint", target)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listening: %w", err)
	}
	p := &Proxy{ln: ln, target: target, client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}}
	p.srv = &http.Server{Handler: p}
	go p.srv.Serve(ln)
	return p, nil
}

// Endpoint is the URL clients use instead of the target's.
func (p *Proxy) Endpoint() string { return "http://" + p.ln.Addr().String() }

// Close stops the proxy.
func (p *Proxy) Close() { p.srv.Close() }

// SetRule sets the rule for the calls to come (nil forwards everything).
func (p *Proxy) SetRule(r Rule) {
	p.mu.Lock()
	p.rule = r
	p.mu.Unlock()
}

// Refuse makes the proxy answer every request with r (nil stops refusing).
func (p *Proxy) Refuse(r *Refusal) {
	p.mu.Lock()
	p.refuse = r
	p.mu.Unlock()
}

// Pause holds every PutRecords call that arrives from now on, once it is
// logged and its fault decided, until Resume.
func (p *Proxy) Pause() {
	p.mu.Lock()
	if p.paused == nil {
		p.paused = make(chan struct{})
	}
	p.mu.Unlock()
}

// Resume lets the held calls go on.
func (p *Proxy) Resume() {
	p.mu.Lock()
	if p.paused != nil {
		close(p.paused)
		p.paused = nil
	}
	p.mu.Unlock()
}

// Waiting is the number of PutRecords calls Pause is holding.
func (p *Proxy) Waiting() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.waiting
}

// Calls returns the PutRecords calls received so far, in order.
func (p *Proxy) Calls() []Call {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]Call(nil), p.calls...)
}

// putRecordsEntry is the part of a PutRecords request the proxy reads;
// other fields are kept as they are.
type putRecordsEntry struct {
	Data            []byte  `json:"Data"`
	PartitionKey    string  `json:"PartitionKey"`
	ExplicitHashKey *string `json:"ExplicitHashKey,omitempty"`
}

type putRecordsResult struct {
	SequenceNumber string `json:"SequenceNumber,omitempty"`
	ShardID        string `json:"ShardId,omitempty"`
	ErrorCode      string `json:"ErrorCode,omitempty"`
	ErrorMessage   string `json:"ErrorMessage,omitempty"`
}

type putRecordsResponse struct {
	FailedRecordCount int                `json:"FailedRecordCount"`
	Records           []putRecordsResult `json:"Records"`
	EncryptionType    string             `json:"EncryptionType,omitempty"`
}

func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	p.mu.Lock()
	refuse := p.refuse
	p.mu.Unlock()
	if refuse != nil {
		writeError(w, refuse.Status, refuse.Type, refuse.Message)
		return
	}
	if !strings.HasSuffix(r.Header.Get("X-Amz-Target"), ".PutRecords") {
		p.forward(w, r, body)
		return
	}
	var req map[string]json.RawMessage
	var entries []putRecordsEntry
	if err := json.Unmarshal(body, &req); err != nil {
		p.forward(w, r, body)
		return
	}
	if err := json.Unmarshal(req["Records"], &entries); err != nil {
		p.forward(w, r, body)
		return
	}
	call := Call{Records: make([]Entry, len(entries))}
	for i, e := range entries {
		call.Records[i] = Entry{PartitionKey: e.PartitionKey, Data: e.Data}
	}
	p.mu.Lock()
	if p.rule != nil {
		call.Fault = p.rule(len(p.calls), call.Records)
	}
	p.calls = append(p.calls, call)
	if gate := p.paused; gate != nil {
		p.waiting++
		p.mu.Unlock()
		select {
		case <-gate:
		case <-r.Context().Done():
		}
		p.mu.Lock()
		p.waiting--
	}
	p.mu.Unlock()

	switch {
	case call.Fault.Call == Throttle:
		writeError(w, http.StatusBadRequest, Throttle, "Rate exceeded for shard shardId-000000000000 in stream under account 000000000000.")
		return
	case call.Fault.Call != "":
		writeError(w, http.StatusBadRequest, call.Fault.Call, "refused by the test proxy")
		return
	case len(call.Fault.Reject) == 0:
		p.forward(w, r, body)
		return
	}
	// Forward the accepted records only, then merge the rejected ones in.
	var keep []putRecordsEntry
	for i, e := range entries {
		if _, rejected := call.Fault.Reject[i]; !rejected {
			keep = append(keep, e)
		}
	}
	resp := putRecordsResponse{}
	if len(keep) > 0 {
		keepJSON, _ := json.Marshal(keep)
		req["Records"] = keepJSON
		fwd, _ := json.Marshal(req)
		status, out, err := p.roundTrip(r, fwd)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		if status != http.StatusOK {
			writeRaw(w, status, out)
			return
		}
		if err := json.Unmarshal(out, &resp); err != nil || len(resp.Records) != len(keep) {
			http.Error(w, fmt.Sprintf("unexpected PutRecords answer %q", out), http.StatusBadGateway)
			return
		}
	}
	merged := make([]putRecordsResult, len(entries))
	k := 0
	for i := range entries {
		if code, rejected := call.Fault.Reject[i]; rejected {
			merged[i] = putRecordsResult{ErrorCode: code, ErrorMessage: "rejected by the test proxy (" + code + ")"}
			resp.FailedRecordCount++
			continue
		}
		merged[i] = resp.Records[k]
		k++
	}
	resp.Records = merged
	out, _ := json.Marshal(resp)
	writeRaw(w, http.StatusOK, out)
}

// forward passes a request on unchanged and copies the answer back.
func (p *Proxy) forward(w http.ResponseWriter, r *http.Request, body []byte) {
	status, out, err := p.roundTrip(r, body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	writeRaw(w, status, out)
}

func (p *Proxy) roundTrip(r *http.Request, body []byte) (int, []byte, error) {
	req, err := http.NewRequestWithContext(r.Context(), r.Method, p.target+r.URL.RequestURI(), bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	for k, vs := range r.Header {
		if k == "Content-Length" {
			continue
		}
		req.Header[k] = vs
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	return resp.StatusCode, out, err
}

func writeRaw(w http.ResponseWriter, status int, body []byte) {
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	w.WriteHeader(status)
	w.Write(body)
}

func writeError(w http.ResponseWriter, status int, typ, msg string) {
	out, _ := json.Marshal(map[string]string{"__type": typ, "message": msg})
	writeRaw(w, status, out)
}
