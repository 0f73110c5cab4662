package policy

import (
	"errors"
	"fmt"
	"strings"
)

// The parts of an original stream name a template can use: the whole name,
// the part before its first '-' (the category, as $by_category splits it)
// and the part after it. A name without '-' is all category, with an empty id.
const (
	partStream   = "stream"
	partCategory = "category"
	partID       = "id"
)

// template is a parsed DITTO_STREAM_TEMPLATE: literal text and parts.
type template struct {
	segs     []segment
	identity bool // exactly {stream}
}

type segment struct {
	literal string
	part    string // "" for a literal
}

func parseTemplate(s string) (template, error) {
	t := template{identity: s == "{"+partStream+"}"}
	if strings.TrimSpace(s) == "" {
		return t, errors.New("the template is empty")
	}
	if strings.HasPrefix(s, "$") {
		return t, errors.New("destination streams must not start with '$' (system streams)")
	}
	for s != "" {
		open := strings.IndexAny(s, "{}")
		if open < 0 {
			t.segs = append(t.segs, segment{literal: s})
			break
		}
		if s[open] == '}' {
			return t, errors.New("'}' without '{'")
		}
		if open > 0 {
			t.segs = append(t.segs, segment{literal: s[:open]})
		}
		end := strings.IndexByte(s[open:], '}')
		if end < 0 {
			return t, errors.New("'{' without '}'")
		}
		name := s[open+1 : open+end]
		switch name {
		case partStream, partCategory, partID:
		default:
			return t, fmt.Errorf("unknown part {%s}: expected {stream}, {category} or {id}", name)
		}
		t.segs = append(t.segs, segment{part: name})
		s = s[open+end+1:]
	}
	return t, nil
}

// consolidates reports whether the template writes many streams into one:
// it uses neither {stream} nor {id}.
func (t template) consolidates() bool { return !t.has(partStream) && !t.has(partID) }

func (t template) has(part string) bool {
	for _, s := range t.segs {
		if s.part == part {
			return true
		}
	}
	return false
}

// render returns the destination stream of original stream name. It runs
// for every event: a template without parts returns its text as it is, and
// the others allocate once.
func (t template) render(name string) string {
	switch {
	case t.identity:
		return name
	case len(t.segs) == 1 && t.segs[0].part == "":
		return t.segs[0].literal
	}
	cat, id := split(name)
	n := 0
	for _, s := range t.segs {
		n += len(s.text(name, cat, id))
	}
	var b strings.Builder
	b.Grow(n)
	for _, s := range t.segs {
		b.WriteString(s.text(name, cat, id))
	}
	return b.String()
}

// text is what the segment writes for a stream name split into cat and id.
func (s segment) text(name, cat, id string) string {
	switch s.part {
	case partStream:
		return name
	case partCategory:
		return cat
	case partID:
		return id
	}
	return s.literal
}

// split splits a stream name at its first '-'.
func split(name string) (category, id string) {
	category, id, _ = strings.Cut(name, "-")
	return category, id
}
