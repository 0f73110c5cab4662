package sinks

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
)

// AppendEnvelope appends e as the JSON envelope of benfoster/ditto's Kinesis
// image, field for field, so that readers of that image keep working:
//
//	{"stream_id":"customer-1","event_id":"…","event_number":0,"event_type":"…",
//	 "event_timestamp":"2020-07-03T07:32:58.916158Z","replicated_on":"…",
//	 "data":{…},"metadata":{…}}
//
// data and metadata are embedded as they are, formatting preserved, when
// they are valid UTF-8 JSON (data only when its content type says JSON).
// Otherwise, and when empty, they are base64 strings and the envelope says
// so with "data_encoding":"base64" or "metadata_encoding":"base64", so that
// every event's bytes survive exactly.
func AppendEnvelope(dst []byte, e *Event, replicatedOn time.Time) []byte {
	dst = append(dst, `{"stream_id":`...)
	dst = appendJSONString(dst, e.Stream)
	dst = append(dst, `,"event_id":"`...)
	dst = AppendUUID(dst, e.ID)
	dst = append(dst, `","event_number":`...)
	dst = strconv.AppendUint(dst, e.Number, 10)
	dst = append(dst, `,"event_type":`...)
	dst = appendJSONString(dst, e.Type)
	dst = append(dst, `,"event_timestamp":"`...)
	dst = e.Created.UTC().AppendFormat(dst, time.RFC3339Nano)
	dst = append(dst, `","replicated_on":"`...)
	dst = replicatedOn.UTC().AppendFormat(dst, time.RFC3339Nano)
	dst = append(dst, '"')
	dst = appendBody(dst, "data", e.Data, e.ContentType == "application/json")
	dst = appendBody(dst, "metadata", e.Metadata, true)
	return append(dst, '}')
}

// EmbedsJSON reports whether AppendEnvelope embeds b as JSON.
func EmbedsJSON(b []byte) bool { return len(b) > 0 && utf8.Valid(b) && json.Valid(b) }

func appendBody(dst []byte, name string, b []byte, maybeJSON bool) []byte {
	dst = append(dst, `,"`...)
	dst = append(dst, name...)
	dst = append(dst, `":`...)
	if maybeJSON && EmbedsJSON(b) {
		return append(dst, b...)
	}
	dst = append(dst, '"')
	dst = base64.StdEncoding.AppendEncode(dst, b)
	dst = append(dst, `","`...)
	dst = append(dst, name...)
	return append(dst, `_encoding":"base64"`...)
}

// AppendUUID appends id in its canonical form, as uuid.UUID.String does,
// without a string per event.
func AppendUUID(dst []byte, id uuid.UUID) []byte {
	dst = hex.AppendEncode(dst, id[0:4])
	dst = append(dst, '-')
	dst = hex.AppendEncode(dst, id[4:6])
	dst = append(dst, '-')
	dst = hex.AppendEncode(dst, id[6:8])
	dst = append(dst, '-')
	dst = hex.AppendEncode(dst, id[8:10])
	dst = append(dst, '-')
	return hex.AppendEncode(dst, id[10:16])
}

// EnvelopeSize is about the size of e's envelope (its bodies as base64 at
// worst), to allocate it once.
func EnvelopeSize(e *Event) int {
	return 256 + 2*len(e.Stream) + 2*len(e.Type) + (len(e.Data)+len(e.Metadata))*4/3
}

// appendJSONString appends s as a JSON string, as encoding/json writes it
// without HTML escaping. Stream names and event types are nearly always
// printable ASCII without quotes or backslashes, which need no escaping:
// only other strings go through the encoder.
func appendJSONString(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			return appendEncodedString(dst, s)
		}
	}
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"')
}

func appendEncodedString(dst []byte, s string) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.Encode(s) // a string always encodes
	return append(dst, bytes.TrimSuffix(b.Bytes(), []byte{'\n'})...)
}
