package policy

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// The metadata keys ditto writes. The $original* and $subscription* keys
// are this hop's source coordinates (each hop overwrites them); $origin is
// the chain of DITTO_ORIGIN_NAMEs the event has passed through (kept and
// extended); $signature is the content signature of the event as it was on
// the first source (kept once present).
const (
	KeyOriginalStreamID        = "$originalStreamId"
	KeyOriginalEventNumber     = "$originalEventNumber"
	KeyOriginalCreated         = "$originalCreated"
	KeySubscriptionStreamID    = "$subscriptionStreamId"
	KeySubscriptionEventNumber = "$subscriptionEventNumber"
	KeyOrigin                  = "$origin"
	KeySignature               = "$signature"
	// KeyConflictReason and KeyConflictStreamID are written into the
	// metadata of an event recorded in a conflicts stream: why, and the
	// destination stream it diverged from (see package conflict).
	KeyConflictReason   = "$conflictReason"
	KeyConflictStreamID = "$conflictStreamId"
)

// dittoKeys are removed from metadata before it is signed or compared.
var dittoKeys = []string{KeyOriginalStreamID, KeyOriginalEventNumber, KeyOriginalCreated,
	KeySubscriptionStreamID, KeySubscriptionEventNumber, KeyOrigin, KeySignature,
	KeyConflictReason, KeyConflictStreamID}

func isDittoKey(k string) bool { return slices.Contains(dittoKeys, k) }

// createdLayout is RFC 3339 in UTC with all nine digits of nanoseconds.
const createdLayout = "2006-01-02T15:04:05.000000000Z07:00"

// signaturePrefix starts every signature: the algorithm, then 64 hex digits.
const signaturePrefix = "sha256:"

// member is one top-level key of a JSON object with its value's bytes as
// they were written.
type member struct {
	key   string
	value json.RawMessage
}

// errNotObject: metadata that is not a JSON object is never rewritten.
var errNotObject = errors.New("metadata is not a JSON object")

// members returns the top-level members of a JSON object in order; a
// repeated key keeps its first place and its last value, as decoders read
// it. Empty metadata is the empty object. Values are slices of metadata,
// as written. (A scanner of its own: once json.Valid has passed, finding the
// members is a matter of skipping strings and brackets, and this runs for
// every event written with provenance.) They are appended to dst, which is
// empty: callers on the per-event path pass a memberBuf, so that the
// members of usual metadata stay on their stack.
func members(dst []member, metadata []byte) ([]member, error) {
	b := bytes.Trim(metadata, jsonSpace)
	if len(b) == 0 {
		return dst, nil
	}
	if b[0] != '{' || !json.Valid(b) {
		return nil, errNotObject
	}
	out := dst
	i := skipSpace(b, 1)
	for b[i] != '}' {
		end := skipString(b, i)
		key, err := decodeString(b[i:end])
		if err != nil {
			return nil, errNotObject
		}
		i = skipSpace(b, end)
		i = skipSpace(b, i+1) // the colon
		vend := skipValue(b, i)
		value := json.RawMessage(b[i:vend])
		if j := slices.IndexFunc(out, func(m member) bool { return m.key == key }); j >= 0 {
			out[j].value = value
		} else {
			out = append(out, member{key: key, value: value})
		}
		i = skipSpace(b, vend)
		if b[i] == ',' {
			i = skipSpace(b, i+1)
		}
	}
	return out, nil
}

// memberBuf holds the members of usual metadata without an allocation.
type memberBuf [8]member

// jsonSpace is JSON's whitespace.
const jsonSpace = " \t\n\r"

// The skip functions walk JSON that json.Valid has accepted.

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// skipString returns the index after the string starting at b[i].
func skipString(b []byte, i int) int {
	for i++; b[i] != '"'; i++ {
		if b[i] == '\\' {
			i++
		}
	}
	return i + 1
}

// skipValue returns the index after the value starting at b[i].
func skipValue(b []byte, i int) int {
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for ; ; i++ {
			switch b[i] {
			case '"':
				i = skipString(b, i) - 1
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return i + 1
				}
			}
		}
	}
	for i < len(b) && !strings.ContainsRune(",}] \t\n\r", rune(b[i])) {
		i++
	}
	return i
}

// decodeString decodes a JSON string, without the decoder where it holds no
// escapes (and no invalid UTF-8, which the decoder replaces).
func decodeString(raw []byte) (string, error) {
	if bytes.IndexByte(raw, '\\') < 0 && utf8.Valid(raw) {
		return string(raw[1 : len(raw)-1]), nil
	}
	var s string
	err := json.Unmarshal(raw, &s)
	return s, err
}

// UserMetadata returns metadata without the keys ditto writes, in canonical
// form: top-level keys sorted, values compact. Empty metadata is "{}". It
// fails on metadata that is not a JSON object.
func UserMetadata(metadata []byte) ([]byte, error) {
	ms, err := members(nil, metadata)
	if err != nil {
		return nil, err
	}
	return canonical(nil, ms)
}

// canonical appends the members other than ditto's, keys sorted, values
// compact, as an object.
func canonical(dst []byte, ms []member) ([]byte, error) {
	var ub memberBuf
	user := ub[:0]
	for _, m := range ms {
		if !isDittoKey(m.key) {
			user = append(user, m)
		}
	}
	slices.SortFunc(user, func(a, b member) int { return strings.Compare(a.key, b.key) })
	buf := bytes.NewBuffer(dst)
	buf.WriteByte('{')
	for i, m := range user {
		if i > 0 {
			buf.WriteByte(',')
		}
		buf.Write(appendString(buf.AvailableBuffer(), m.key))
		buf.WriteByte(':')
		if err := json.Compact(buf, m.value); err != nil {
			return nil, errNotObject
		}
	}
	buf.WriteByte('}')
	return buf.Bytes(), nil
}

// Signature is the content signature of an event: SHA-256 over its type,
// its data and its user metadata (see UserMetadata), each prefixed with its
// length, as "sha256:<hex>". It is the same on every hop of a chain, since
// the keys ditto writes are left out. It fails on metadata that is not a
// JSON object.
func Signature(eventType string, data, metadata []byte) (string, error) {
	var mb memberBuf
	ms, err := members(mb[:0], metadata)
	if err != nil {
		return "", err
	}
	var sb sigBuf
	sig, err := appendSignature(sb[:0], eventType, data, ms)
	return string(sig), err
}

// sigBuf holds a signature.
type sigBuf [len(signaturePrefix) + 2*sha256.Size]byte

// appendSignature appends the signature of an event to dst.
func appendSignature(dst []byte, eventType string, data []byte, ms []member) ([]byte, error) {
	var scratch [512]byte
	user, err := canonical(scratch[:0], ms)
	if err != nil {
		return nil, err
	}
	h := sha256.New()
	var n [8]byte
	for _, part := range [][]byte{[]byte(eventType), data, user} {
		binary.BigEndian.PutUint64(n[:], uint64(len(part)))
		h.Write(n[:])
		h.Write(part)
	}
	var sum [sha256.Size]byte
	dst = append(dst, signaturePrefix...)
	return hex.AppendEncode(dst, h.Sum(sum[:0])), nil
}

// validSignature reports whether s has the form Signature returns.
func validSignature(s string) bool {
	hexPart, ok := strings.CutPrefix(s, signaturePrefix)
	if !ok || len(hexPart) != 64 {
		return false
	}
	_, err := hex.DecodeString(hexPart)
	return err == nil
}

// Coordinates are an event's place on this hop's source.
type Coordinates struct {
	Stream  string    // original stream
	Number  uint64    // event number in Stream
	Created time.Time // creation time on the source
	// SubStream and SubNumber are the subscription's stream and the
	// delivery's number in it; written for a consolidated stream only.
	SubStream string
	SubNumber uint64
}

// Annotate returns the metadata to write for an event: its metadata with
// provenance added (the keys of this package; those already present are
// replaced, except that a chain in $origin is extended with
// DITTO_ORIGIN_NAME and a well-formed $signature is kept). It fails, and the
// event must not be rewritten, when the metadata is neither empty nor a JSON
// object.
func (p *Policy) Annotate(eventType string, data, metadata []byte, at Coordinates) ([]byte, error) {
	var mb memberBuf
	ms, err := members(mb[:0], metadata)
	if err != nil {
		return nil, err
	}
	var origin []string
	var sb sigBuf
	var sig []byte
	for _, m := range ms {
		switch m.key {
		case KeyOrigin:
			origin = chain(m.value)
		case KeySignature:
			var s string
			if json.Unmarshal(m.value, &s) == nil && validSignature(s) {
				sig = append(sb[:0], s...)
			}
		}
	}
	if sig == nil {
		if sig, err = appendSignature(sb[:0], eventType, data, ms); err != nil {
			return nil, err
		}
	}
	if p.origin != "" {
		origin = append(origin, p.origin)
	}

	out := make([]byte, 0, len(metadata)+256)
	out = append(out, '{')
	for _, m := range ms {
		if isDittoKey(m.key) {
			continue
		}
		out = appendString(out, m.key)
		out = append(out, ':')
		out = append(out, m.value...)
		out = append(out, ',')
	}
	field := func(key string) {
		out = appendString(out, key)
		out = append(out, ':')
	}
	field(KeyOriginalStreamID)
	out = appendString(out, at.Stream)
	out = append(out, ',')
	field(KeyOriginalEventNumber)
	out = strconv.AppendUint(out, at.Number, 10)
	out = append(out, ',')
	field(KeyOriginalCreated)
	out = append(out, '"')
	out = at.Created.UTC().AppendFormat(out, createdLayout)
	out = append(out, '"', ',')
	if p.mode == Consolidated {
		field(KeySubscriptionStreamID)
		out = appendString(out, at.SubStream)
		out = append(out, ',')
		field(KeySubscriptionEventNumber)
		out = strconv.AppendUint(out, at.SubNumber, 10)
		out = append(out, ',')
	}
	if origin != nil {
		field(KeyOrigin)
		out = append(out, '[')
		for i, o := range origin {
			if i > 0 {
				out = append(out, ',')
			}
			out = appendString(out, o)
		}
		out = append(out, ']', ',')
	}
	field(KeySignature)
	out = append(out, '"') // a signature needs no escapes
	out = append(out, sig...)
	return append(out, '"', '}'), nil
}

// chain reads an $origin value: a list of names, or one name.
func chain(value json.RawMessage) []string {
	var names []string
	var one string
	switch {
	case json.Unmarshal(value, &names) == nil:
		return names
	case json.Unmarshal(value, &one) == nil:
		return []string{one}
	}
	return nil
}

// originKey is what metadata holding an $origin contains, for a quick look
// before it is parsed.
var originKey = []byte(`"` + KeyOrigin + `"`)

// cameFrom reports whether the $origin chain of metadata holds name.
func cameFrom(metadata []byte, name string) bool {
	if !bytes.Contains(metadata, originKey) {
		return false
	}
	var mb memberBuf
	ms, err := members(mb[:0], metadata)
	if err != nil {
		return false
	}
	for _, m := range ms {
		if m.key == KeyOrigin {
			return slices.Contains(chain(m.value), name)
		}
	}
	return false
}

// Extend returns metadata, a JSON object or empty, with keys set to
// values (JSON values, as written), replacing keys already present. It
// fails on metadata that is not a JSON object.
func Extend(metadata []byte, keys []string, values []json.RawMessage) ([]byte, error) {
	ms, err := members(nil, metadata)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, len(metadata)+128)
	out = append(out, '{')
	for _, m := range ms {
		if slices.Contains(keys, m.key) {
			continue
		}
		out = appendString(out, m.key)
		out = append(out, ':')
		out = append(out, m.value...)
		out = append(out, ',')
	}
	for i, k := range keys {
		if i > 0 {
			out = append(out, ',')
		}
		out = appendString(out, k)
		out = append(out, ':')
		out = append(out, values[i]...)
	}
	if len(keys) == 0 && len(out) > 1 {
		out = out[:len(out)-1]
	}
	return append(out, '}'), nil
}

// String returns s as a JSON string value, for Extend.
func String(s string) json.RawMessage { return appendString(nil, s) }

// NotObjectReason is the park reason of an event whose metadata cannot carry
// the provenance this policy requires.
func (p *Policy) NotObjectReason() string {
	return "metadata is not a JSON object, and " + p.needs + " needs provenance, which ditto only adds to JSON-object metadata"
}

// Provenance is what ditto recorded in a written event's metadata. The
// numbers are valid where their Has flag is set.
type Provenance struct {
	OriginalStreamID        string
	OriginalEventNumber     uint64
	HasOriginalEventNumber  bool
	OriginalCreated         string
	SubscriptionStreamID    string
	SubscriptionEventNumber uint64
	HasSubscriptionNumber   bool
	Origin                  []string
	Signature               string
}

// ParseProvenance reads the keys ditto writes from metadata; ok is false
// if the metadata is not a JSON object or holds none of them.
func ParseProvenance(metadata []byte) (Provenance, bool) {
	var p Provenance
	var mb memberBuf
	ms, err := members(mb[:0], metadata)
	if err != nil {
		return p, false
	}
	found := false
	for _, m := range ms {
		if !isDittoKey(m.key) {
			continue
		}
		found = true
		switch m.key {
		case KeyOriginalStreamID:
			json.Unmarshal(m.value, &p.OriginalStreamID)
		case KeyOriginalEventNumber:
			p.OriginalEventNumber, err = strconv.ParseUint(string(m.value), 10, 64)
			p.HasOriginalEventNumber = err == nil
		case KeyOriginalCreated:
			json.Unmarshal(m.value, &p.OriginalCreated)
		case KeySubscriptionStreamID:
			json.Unmarshal(m.value, &p.SubscriptionStreamID)
		case KeySubscriptionEventNumber:
			p.SubscriptionEventNumber, err = strconv.ParseUint(string(m.value), 10, 64)
			p.HasSubscriptionNumber = err == nil
		case KeyOrigin:
			json.Unmarshal(m.value, &p.Origin)
		case KeySignature:
			json.Unmarshal(m.value, &p.Signature)
		}
	}
	return p, found
}

// appendString appends s as a JSON string, without escaping <, > and &.
func appendString(dst []byte, s string) []byte {
	plain := true
	for i := 0; i < len(s) && plain; i++ {
		c := s[i]
		plain = c >= 0x20 && c < 0x7f && c != '"' && c != '\\'
	}
	if plain {
		dst = append(dst, '"')
		dst = append(dst, s...)
		return append(dst, '"')
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.Encode(s) // a string always encodes
	return append(dst, bytes.TrimSuffix(b.Bytes(), []byte{'\n'})...)
}
