package esdbtest

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"math"
	"strconv"
	"strings"

	"github.com/google/uuid"
)

// The standard system projections (§4) run synchronously inside the commit
// that writes their input, so a reader never sees an event without its
// links. On a real server they lag behind; tests that poll still pass, and
// tests that do not poll become deterministic.

// Projection ids used in the "$v" link metadata ("<id>:<epoch>:<version>:4").
const (
	projStreams          = 1
	projStreamByCategory = 2
	projByCategory       = 3
	projByEventType      = 4
)

// Names of the projection output streams.
const (
	streamsStream   = "$streams"
	ceStreamPrefix  = "$ce-"
	etStreamPrefix  = "$et-"
	categoryPrefix  = "$category-"
	deletedEtStream = "$et-$deleted"
)

// ceACL is the metadata written to $$$ce-C before the first link to $ce-C.
var ceACL = []byte(`{"$acl":{"$r":"$all","$mr":"$all"}}`)

// project runs the standard projections over the records committed so far
// in this commit, emitting their links into the same commit.
//
// Lock must be held, inside a commit.
func (s *Store) project() {
	n := len(s.pending)
	for i := 0; i < n; i++ {
		rec := s.pending[i]
		name := rec.Stream
		switch {
		case !strings.HasPrefix(name, "$"):
			s.projectEvent(s.streams[name], rec)
		case isMetastream(name) && !strings.HasPrefix(name[2:], "$"):
			s.projectMetadata(s.streams[name[2:]], rec)
		}
	}
}

// projectEvent handles one record of a non-system stream.
//
// Lock must be held, inside a commit.
func (s *Store) projectEvent(st *streamState, rec *Record) {
	ce := s.ceOf(st)
	if rec.Number == Tombstone {
		if ce != nil {
			s.emitLink(ce, rec, st, nil, true, projByCategory)
		}
		s.emitLink(s.stream(deletedEtStream), rec, st, nil, true, projByEventType)
		return
	}
	if ce != nil {
		var data []byte
		if rec.Type == linkType {
			data = rec.Data // a link to a link points at the original target
		}
		s.emitLink(ce, rec, st, data, false, projByCategory)
	}
	if rec.Type != linkType {
		et := s.et[rec.Type]
		if et == nil {
			et = s.stream(etStreamPrefix + rec.Type)
			s.et[rec.Type] = et
		}
		s.emitLink(et, rec, st, nil, false, projByEventType)
	}
	if rec.Number == 0 {
		s.emitLink(s.stream(streamsStream), rec, st, nil, false, projStreams)
		if st.cat != "" {
			s.emitCategoryStream(st)
		}
	}
}

// projectMetadata handles a $$S event of a non-system stream S: a soft
// delete ($tb == MaxInt64) is a deletion for $by_category and
// $by_event_type, anything else is indexed under $et-$metadata.
//
// Lock must be held, inside a commit.
func (s *Store) projectMetadata(st *streamState, rec *Record) {
	if parseMeta(rec).tb == math.MaxInt64 {
		if ce := s.ceOf(st); ce != nil {
			s.emitLink(ce, rec, st, nil, true, projByCategory)
		}
		s.emitLink(s.stream(deletedEtStream), rec, st, nil, true, projByEventType)
		return
	}
	s.emitLink(s.stream(etStreamPrefix+rec.Type), rec, st, nil, false, projByEventType)
}

// ceOf returns the $ce-<category> stream of st, or nil when st has no
// category. The rule is "first -": the category is the part before the
// first '-', which must not be at index 0.
//
// Lock must be held.
func (s *Store) ceOf(st *streamState) *streamState {
	if !st.ceDone {
		st.ceDone = true
		if i := strings.IndexByte(st.name, '-'); i > 0 && !strings.HasPrefix(st.name, "$") {
			st.cat = st.name[:i]
			st.ce = s.stream(ceStreamPrefix + st.cat)
		}
	}
	return st.ce
}

// emitLink appends a $> link to src (in stream origin, or origin's
// metastream) to stream to. data overrides the default "<n>@<stream>"
// target; deleted adds "$deleted":-1.
//
// Lock must be held, inside a commit.
func (s *Store) emitLink(to *streamState, src *Record, origin *streamState, data []byte, deleted bool, projID int) {
	if to.tombstoned() {
		return
	}
	if projID == projByCategory && len(to.events) == 0 && !to.hasMeta {
		s.emitMeta(to, ceACL)
	}
	rec := s.newRecord()
	rec.Stream = to.name
	rec.Number = to.last() + 1
	rec.ID = s.newID()
	rec.Type = linkType
	if data == nil {
		b := strconv.AppendInt(s.scratch[:0], src.Number, 10)
		b = append(b, '@')
		b = append(b, src.Stream...)
		s.scratch = b
		data = b
		if src.Stream == origin.name {
			rec.target = origin.ref
		}
	}
	rec.Data = s.keep(data)
	rec.Metadata = s.keep(s.linkMetadata(src, origin.name, deleted, projID))
	s.add(rec)
}

// linkMetadata builds the compact JSON metadata of a projection link, keys
// in the server's order: $v, $c, $p, $o, $causedBy, then $correlationId
// when the source has one, then $deleted for deletions.
//
// Lock must be held.
func (s *Store) linkMetadata(src *Record, origin string, deleted bool, projID int) []byte {
	b := append(s.scratch[:0], `{"$v":"`...)
	b = strconv.AppendInt(b, int64(projID), 10)
	b = append(b, `:-1:1:4","$c":`...)
	b = strconv.AppendUint(b, src.Position, 10)
	b = append(b, `,"$p":`...)
	b = strconv.AppendUint(b, src.Position, 10)
	b = append(b, `,"$o":`...)
	b = appendJSONString(b, origin)
	b = append(b, `,"$causedBy":"`...)
	b = appendUUID(b, src.ID)
	b = append(b, '"')
	// One source record gets several links ($ce-, $et-, $streams): parse
	// its metadata once.
	if s.corrSrc != src {
		s.corrSrc, s.corrVal = src, correlationID(src.Metadata)
	}
	if corr := s.corrVal; corr != nil {
		b = append(b, `,"$correlationId":`...)
		b = append(b, corr...)
	}
	if deleted {
		b = append(b, `,"$deleted":-1`...)
	}
	b = append(b, '}')
	s.scratch = b
	return b
}

// appendUUID appends id in its canonical hyphenated form without the
// string allocation of uuid.UUID.String.
func appendUUID(b []byte, id uuid.UUID) []byte {
	var buf [36]byte
	hex.Encode(buf[0:8], id[0:4])
	buf[8] = '-'
	hex.Encode(buf[9:13], id[4:6])
	buf[13] = '-'
	hex.Encode(buf[14:18], id[6:8])
	buf[18] = '-'
	hex.Encode(buf[19:23], id[8:10])
	buf[23] = '-'
	hex.Encode(buf[24:], id[10:])
	return append(b, buf[:]...)
}

// correlationID is the raw JSON value of "$correlationId" in event
// metadata, or nil. The cheap Contains test avoids parsing most metadata.
func correlationID(meta []byte) json.RawMessage {
	if !bytes.Contains(meta, []byte(`"$correlationId"`)) {
		return nil
	}
	// Writers usually put it first as a plain string: take it without a
	// JSON parse (a profiled hot spot of appends).
	if v, ok := bytes.CutPrefix(meta, []byte(`{"$correlationId":"`)); ok {
		if end := bytes.IndexByte(v, '"'); end >= 0 && bytes.IndexByte(v[:end], '\\') < 0 && json.Valid(meta) {
			return json.RawMessage(meta[len(`{"$correlationId":`) : len(`{"$correlationId":`)+end+2])
		}
	}
	var m struct {
		Corr json.RawMessage `json:"$correlationId"`
	}
	if json.Unmarshal(meta, &m) != nil {
		return nil
	}
	return m.Corr
}

// appendJSONString appends s as a JSON string.
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == '"' || c == '\\' {
			q, _ := json.Marshal(s) // rare: only names that need escaping
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// emitCategoryStream records a new stream of category C as a "$@" event
// with the stream name as data in $category-C ($stream_by_category).
//
// Lock must be held, inside a commit.
func (s *Store) emitCategoryStream(st *streamState) {
	to := s.stream(categoryPrefix + st.cat)
	if to.tombstoned() {
		return
	}
	rec := s.newRecord()
	rec.Stream = to.name
	rec.Number = to.last() + 1
	rec.ID = s.newID()
	rec.Type = "$@"
	rec.Data = s.keep([]byte(st.name))
	s.add(rec)
}

// emitMeta writes a $metadata event to the metastream of to.
//
// Lock must be held, inside a commit.
func (s *Store) emitMeta(to *streamState, data []byte) {
	ms := s.stream("$$" + to.name)
	rec := s.newRecord()
	rec.Stream = ms.name
	rec.Number = ms.last() + 1
	rec.ID = s.newID()
	rec.Type = "$metadata"
	rec.IsJSON = true
	rec.Data = s.keep(data)
	s.add(rec)
}
