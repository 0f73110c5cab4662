package sinks

import (
	"encoding/base64"
	"encoding/json"
	"testing"
	"time"

	"github.com/google/uuid"
)

func TestEnvelope(t *testing.T) {
	created := time.Date(2020, 7, 3, 7, 32, 58, 916158000, time.UTC)
	replicated := time.Date(2020, 7, 3, 7, 41, 17, 847499000, time.FixedZone("CEST", 7200))
	id := uuid.MustParse("48b47bfd-50f6-4df2-8d62-c4e00341e701")
	cases := []struct {
		name string
		ev   Event
		want string
	}{
		{"json, formatting kept", Event{Stream: "customer-8cda", Number: 0, ID: id, Type: "customer_registered", ContentType: "application/json",
			Data: []byte("{\n  \"first_name\": \"John\" }"), Metadata: []byte(`{"source":"ditto"}`), Created: created},
			"{\"stream_id\":\"customer-8cda\",\"event_id\":\"48b47bfd-50f6-4df2-8d62-c4e00341e701\",\"event_number\":0,\"event_type\":\"customer_registered\"," +
				"\"event_timestamp\":\"2020-07-03T07:32:58.916158Z\",\"replicated_on\":\"2020-07-03T05:41:17.847499Z\"," +
				"\"data\":{\n  \"first_name\": \"John\" },\"metadata\":{\"source\":\"ditto\"}}"},
		{"binary and empty", Event{Stream: "s-<1>\"", Number: 7, ID: id, Type: "t", ContentType: "application/octet-stream",
			Data: []byte{0, 1, 0xff}, Created: created},
			`{"stream_id":"s-<1>\"","event_id":"48b47bfd-50f6-4df2-8d62-c4e00341e701","event_number":7,"event_type":"t",` +
				`"event_timestamp":"2020-07-03T07:32:58.916158Z","replicated_on":"2020-07-03T05:41:17.847499Z",` +
				`"data":"AAH/","data_encoding":"base64","metadata":"","metadata_encoding":"base64"}`},
		// JSON data under a binary content type, and invalid UTF-8 inside a
		// JSON string, are not embedded: embedding would change what a
		// reader gets back.
		{"json bytes marked binary, bad utf-8 metadata", Event{Stream: "s", ID: id, Type: "t", ContentType: "application/octet-stream",
			Data: []byte(`{"a":1}`), Metadata: []byte("\"\xff\""), Created: created},
			`{"stream_id":"s","event_id":"48b47bfd-50f6-4df2-8d62-c4e00341e701","event_number":0,"event_type":"t",` +
				`"event_timestamp":"2020-07-03T07:32:58.916158Z","replicated_on":"2020-07-03T05:41:17.847499Z",` +
				`"data":"eyJhIjoxfQ==","data_encoding":"base64","metadata":"Iv8i","metadata_encoding":"base64"}`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := AppendEnvelope(nil, &tc.ev, replicated)
			if string(got) != tc.want {
				t.Fatalf("got\n%s\nwant\n%s", got, tc.want)
			}
			// Every envelope parses, and gives the event's bytes back.
			var env struct {
				Stream       string          `json:"stream_id"`
				Data         json.RawMessage `json:"data"`
				DataEncoding string          `json:"data_encoding"`
			}
			if err := json.Unmarshal(got, &env); err != nil {
				t.Fatal(err)
			}
			data := []byte(env.Data)
			if env.DataEncoding == "base64" {
				var s string
				json.Unmarshal(env.Data, &s)
				data, _ = base64.StdEncoding.DecodeString(s)
			}
			if env.Stream != tc.ev.Stream || string(data) != string(tc.ev.Data) {
				t.Fatalf("decoded stream %q data %q", env.Stream, data)
			}
		})
	}
}

func TestAppendUUID(t *testing.T) {
	for i := 0; i < 100; i++ {
		id := uuid.New()
		if got := string(AppendUUID([]byte("x"), id)); got != "x"+id.String() {
			t.Fatalf("%s, want x%s", got, id)
		}
	}
}

// Strings that need no escaping skip the encoder; every string comes out
// as the encoder writes it.
func TestAppendJSONString(t *testing.T) {
	for _, s := range []string{"", "customer-1", "a b.c_d:e/f~", "<&>", `q"uote`, `back\slash`, "tab\t", "\x7f", "Zoë", "🦀",
		"line\u2028sep", "bad \xff utf-8", "\x00"} {
		got, want := appendJSONString([]byte("x"), s), appendEncodedString([]byte("x"), s)
		if string(got) != string(want) {
			t.Errorf("%q: got %s, want %s", s, got, want)
		}
		var back string
		if err := json.Unmarshal(got[1:], &back); err != nil {
			t.Errorf("%q: %s does not parse: %v", s, got, err)
		}
	}
}

func BenchmarkAppendEnvelope(b *testing.B) {
	e := Event{Stream: "customer-8cda", ID: uuid.New(), Type: "customer_registered", ContentType: "application/json",
		Data: []byte(`{"first_name":"John","last_name":"Smith","email":"john@example.com"}`), Metadata: []byte(`{"$correlationId":"c"}`),
		Created: time.Now()}
	buf := make([]byte, 0, 1024)
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendEnvelope(buf[:0], &e, now)
	}
}
