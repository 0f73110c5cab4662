package esdbtest

import (
	"crypto/tls"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/google/uuid"
)

// postEvents is the curl-style classic write: POST /streams/{stream}.
func postEvents(t *testing.T, hc *http.Client, base, stream, body, contentType, expected, user string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, base+"/streams/"+url.PathEscape(stream), strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", contentType)
	if expected != "" {
		req.Header.Set("ES-ExpectedVersion", expected)
	}
	if user != "" {
		u, p, _ := strings.Cut(user, ":")
		req.SetBasicAuth(u, p)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

func eventsJSON(types ...string) string {
	var b strings.Builder
	b.WriteString("[")
	for i, typ := range types {
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString(`{"eventId":"` + uuid.NewString() + `","eventType":"` + typ + `","data":{"n":` + string(rune('0'+i)) + `},"metadata":{"m":true}}`)
	}
	b.WriteString("]")
	return b.String()
}

func TestHTTPWrites(t *testing.T) {
	srv, c := startInsecure(t)
	ctx := testCtx(t)
	base := "http://" + srv.Addr()
	hc := &http.Client{}

	resp, err := hc.Get(base + "/health/live")
	if err != nil || (resp.StatusCode != http.StatusNoContent && resp.StatusCode != http.StatusOK) {
		t.Fatalf("health: %v %v", resp, err)
	}
	resp.Body.Close()

	stream := "http/one two" // percent-encoded in the URL
	if r := postEvents(t, hc, base, stream, eventsJSON("A", "B"), eventsContentType, "-1", ""); r.StatusCode != http.StatusCreated {
		t.Fatalf("post: %s", r.Status)
	}
	evs, err := readAllOf(ctx, c, stream, false)
	if err != nil || len(evs) != 2 || evs[1].Event.EventType != "B" || string(evs[0].Event.Data) != `{"n":0}` ||
		string(evs[0].Event.UserMetadata) != `{"m":true}` || evs[0].Event.ContentType != "application/json" {
		t.Fatalf("written events: %+v, %v", evs, err)
	}

	r := postEvents(t, hc, base, stream, eventsJSON("C"), eventsContentType, "-1", "")
	if r.StatusCode != http.StatusBadRequest || r.Header.Get("ES-CurrentVersion") != "1" {
		t.Fatalf("wrong expected version: %s, ES-CurrentVersion %q", r.Status, r.Header.Get("ES-CurrentVersion"))
	}
	if r := postEvents(t, hc, base, stream, eventsJSON("C"), eventsContentType, "1", ""); r.StatusCode != http.StatusCreated {
		t.Fatalf("post at revision 1: %s", r.Status)
	}
	if r := postEvents(t, hc, base, stream, eventsJSON("D"), eventsContentType, "-4", ""); r.StatusCode != http.StatusCreated {
		t.Fatalf("post with stream exists: %s", r.Status)
	}
	for name, tc := range map[string]struct{ body, ct, exp string }{
		"not json":          {`[{`, eventsContentType, ""},
		"no event id":       {`[{"eventType":"A","data":{}}]`, eventsContentType, ""},
		"no event type":     {`[{"eventId":"` + uuid.NewString() + `","data":{}}]`, eventsContentType, ""},
		"wrong media type":  {eventsJSON("A"), "text/plain", ""},
		"bad expected":      {eventsJSON("A"), eventsContentType, "abc"},
		"too large at once": {`[{"eventId":"` + uuid.NewString() + `","eventType":"A","data":"` + strings.Repeat("x", 2<<20) + `"}]`, eventsContentType, ""},
	} {
		if r := postEvents(t, hc, base, stream, tc.body, tc.ct, tc.exp, ""); r.StatusCode != http.StatusBadRequest {
			t.Errorf("%s: %s, want 400", name, r.Status)
		}
	}
	if evs, _ := readAllOf(ctx, c, stream, false); len(evs) != 4 {
		t.Fatalf("%d events after the bad requests, want 4", len(evs))
	}
	if _, err := c.TombstoneStream(ctx, stream, esdb.TombstoneStreamOptions{}); err != nil {
		t.Fatal(err)
	}
	if r := postEvents(t, hc, base, stream, eventsJSON("E"), eventsContentType, "", ""); r.StatusCode != http.StatusGone {
		t.Fatalf("post to a tombstoned stream: %s, want 410", r.Status)
	}
}

func TestHTTPAuthOverTLS(t *testing.T) {
	srv := Start(t, Options{})
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	base := "https://" + srv.Addr()
	if r := postEvents(t, hc, base, "https-1", eventsJSON("A"), eventsContentType, "", "admin:bad"); r.StatusCode != http.StatusUnauthorized {
		t.Fatalf("wrong password: %s, want 401", r.Status)
	}
	if r := postEvents(t, hc, base, "https-1", eventsJSON("A"), eventsContentType, "", "admin:changeit"); r.StatusCode != http.StatusCreated {
		t.Fatalf("admin: %s, want 201", r.Status)
	}
}
