package stdout

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/ditto-replicator/ditto/sinks"
)

func TestOneJSONLinePerEventBinarySafe(t *testing.T) {
	var out bytes.Buffer
	s := New(&out)
	evs := []sinks.Event{
		{Stream: "customer-1", Number: 0, ID: uuid.New(), Type: "registered", ContentType: "application/json", Data: []byte(`{"a":1}`), Metadata: []byte(`{"m":true}`)},
		{Stream: "customer-1", Number: 1, ID: uuid.New(), Type: "blob", ContentType: "application/octet-stream", Data: []byte{0, 0xff, 0x10}, Metadata: []byte{0xc3, 0x28}},
		{Stream: "customer-1", Number: 2, ID: uuid.New(), Type: "empty", ContentType: "application/json"},
	}
	if err := s.Write(context.Background(), "customer-1", evs); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(&out)
	var lines []line
	for sc.Scan() {
		var l line
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		lines = append(lines, l)
	}
	if len(lines) != 3 {
		t.Fatalf("%d lines, want 3", len(lines))
	}
	if string(lines[0].Data) != `{"a":1}` || string(lines[0].Metadata) != `{"m":true}` || lines[0].EventID != evs[0].ID.String() {
		t.Fatalf("JSON event: %+v", lines[0])
	}
	if !bytes.Equal(lines[1].DataBase64, evs[1].Data) || !bytes.Equal(lines[1].MetadataBase64, evs[1].Metadata) || lines[1].Data != nil {
		t.Fatalf("binary event not byte-exact: %+v", lines[1])
	}
	if lines[2].Data != nil || lines[2].DataBase64 != nil || lines[2].EventNumber != 2 {
		t.Fatalf("empty event: %+v", lines[2])
	}
}

// A mapped stream prints both names: the original and the destination.
func TestMappedStreamPrintsBothNames(t *testing.T) {
	var out bytes.Buffer
	s := New(&out)
	ev := sinks.Event{Stream: "customer-1", Number: 4, ID: uuid.New(), Type: "t", ContentType: "application/json", Data: []byte(`{}`)}
	if err := s.Write(context.Background(), "dr-customer-1", []sinks.Event{ev}); err != nil {
		t.Fatal(err)
	}
	if err := s.Write(context.Background(), "customer-1", []sinks.Event{ev}); err != nil {
		t.Fatal(err)
	}
	text := out.String()
	sc := bufio.NewScanner(&out)
	var lines []line
	for sc.Scan() {
		var l line
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatal(err)
		}
		lines = append(lines, l)
	}
	if len(lines) != 2 || lines[0].Stream != "customer-1" || lines[0].DestinationStream != "dr-customer-1" {
		t.Fatalf("mapped line %+v", lines)
	}
	if _, second, _ := strings.Cut(text, "\n"); strings.Contains(second, "destinationStream") {
		t.Fatalf("unmapped line names a destination stream: %s", text)
	}
}
