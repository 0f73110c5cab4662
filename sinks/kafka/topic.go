package kafka

import (
	"fmt"
	"strings"
)

// maxTopicLength is the longest topic name Kafka accepts.
const maxTopicLength = 249

// topicSpec is DITTO_KAFKA_TOPIC: a fixed name, or literal parts and
// placeholders expanded per stream.
type topicSpec struct {
	fixed string  // the name, when there is no placeholder
	parts []piece // the template, otherwise
}

type piece struct {
	literal     string
	placeholder string // "category" or "stream"; "" for a literal
}

// parseTopic parses a topic name or template. Literal text must already be
// valid in a topic name; a fixed name must be valid as a whole.
func parseTopic(s string) (*topicSpec, error) {
	t := &topicSpec{}
	rest := s
	for rest != "" {
		open := strings.IndexByte(rest, '{')
		if open < 0 {
			t.parts = append(t.parts, piece{literal: rest})
			break
		}
		if open > 0 {
			t.parts = append(t.parts, piece{literal: rest[:open]})
		}
		end := strings.IndexByte(rest[open:], '}')
		if end < 0 {
			return nil, fmt.Errorf("unclosed '{': expected {category} or {stream}")
		}
		name := rest[open+1 : open+end]
		if name != "category" && name != "stream" {
			return nil, fmt.Errorf("unknown placeholder {%s}: expected {category} or {stream}", name)
		}
		t.parts = append(t.parts, piece{placeholder: name})
		rest = rest[open+end+1:]
	}
	placeholders := false
	for _, p := range t.parts {
		if p.placeholder != "" {
			placeholders = true
			continue
		}
		if c, ok := invalidChar(p.literal); ok {
			return nil, fmt.Errorf("%q is not allowed in a Kafka topic name (only a-z A-Z 0-9 . _ -)", c)
		}
	}
	if !placeholders {
		if err := checkTopicName(s); err != nil {
			return nil, err
		}
		t.fixed, t.parts = s, nil
	}
	return t, nil
}

// category is what {category} stands for: the stream id before its first
// '-' (KurrentDB's $by_category default), or the whole id without one.
func category(stream string) string {
	if i := strings.IndexByte(stream, '-'); i >= 0 {
		return stream[:i]
	}
	return stream
}

// topic returns the topic of stream's events, or why it has none.
func (t *topicSpec) topic(stream string) (string, error) {
	if t.fixed != "" {
		return t.fixed, nil
	}
	var b strings.Builder
	for _, p := range t.parts {
		switch p.placeholder {
		case "category":
			b.WriteString(category(stream))
		case "stream":
			b.WriteString(stream)
		default:
			b.WriteString(p.literal)
		}
	}
	name := b.String()
	if err := checkTopicName(name); err != nil {
		return "", fmt.Errorf("stream %q maps to topic %q, which Kafka does not accept: %w", stream, name, err)
	}
	return name, nil
}

// checkTopicName applies Kafka's rules for topic names (Topic.validate in
// the broker): 1 to 249 of [a-zA-Z0-9._-], and not "." or "..". Names are
// never changed to fit: two streams would share a topic without saying so.
func checkTopicName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("a topic name must not be empty")
	case name == "." || name == "..":
		return fmt.Errorf("a topic name must not be %q", name)
	case len(name) > maxTopicLength:
		return fmt.Errorf("a topic name is at most %d characters long, this one %d", maxTopicLength, len(name))
	}
	if c, ok := invalidChar(name); ok {
		return fmt.Errorf("%q is not allowed in a Kafka topic name (only a-z A-Z 0-9 . _ -)", c)
	}
	return nil
}

// invalidChar returns the first character of s not allowed in a topic name.
func invalidChar(s string) (rune, bool) {
	for _, c := range s {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == '-':
		default:
			return c, true
		}
	}
	return 0, false
}
