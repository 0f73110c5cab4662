package verify

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
)

// linkEventType is the type of the link events the $by_category projection writes.
const linkEventType = "$>"

// CategoryStream returns the category stream for name: "customer" becomes "$ce-customer"; a
// name that already starts with "$" is returned as is. It lets users avoid the "$" that shells
// expand inside double quotes.
func CategoryStream(name string) string {
	if name == "" || strings.HasPrefix(name, "$") {
		return name
	}
	return "$ce-" + name
}

// enumerateCategory returns the sorted names of the streams linked from category on the source.
// The category is read without resolving links: only the link data "<n>@<stream>" is needed,
// and memory is bounded by the number of streams, not of events. A category that does not
// exist yields no streams and a note.
func enumerateCategory(ctx context.Context, read readPageFunc, category string, pageSize int, prog *progress) ([]string, string, error) {
	category = CategoryStream(category)
	streams := map[string]struct{}{}
	links := 0
	var from uint64
	for {
		if err := ctx.Err(); err != nil {
			return nil, "", fmt.Errorf("enumerate %q: %w", category, err)
		}
		page, err := read(ctx, category, from, pageSize)
		if errors.Is(err, errStreamNotFound) || errors.Is(err, errStreamDeleted) {
			if links == 0 {
				return nil, fmt.Sprintf("category %s not found on the source: no streams to compare", category), nil
			}
			return nil, "", fmt.Errorf("enumerate %q: category stream vanished while being read: %w", category, err)
		}
		if err != nil {
			return nil, "", fmt.Errorf("enumerate %q: %w", category, err)
		}
		for _, ev := range page {
			links++
			if ev.EventType != linkEventType {
				continue
			}
			if name, ok := parseLink(ev.Data); ok {
				streams[name] = struct{}{}
			}
		}
		prog.enumerating(category, links, len(streams))
		if len(page) < pageSize {
			break
		}
		from = page[len(page)-1].EventNumber + 1
	}
	names := slices.Sorted(maps.Keys(streams))
	if len(names) == 0 {
		return nil, fmt.Sprintf("category %s links to no stream", category), nil
	}
	return names, "", nil
}

// parseLink extracts the original stream from link data "<n>@<stream>". A soft deletion is
// linked as "<n>@$$<stream>" (the metadata stream); it names the same original stream. Data of
// another form, or naming a system stream, is not a link to an original stream.
func parseLink(data []byte) (string, bool) {
	num, stream, ok := strings.Cut(string(data), "@")
	if !ok {
		return "", false
	}
	if _, err := strconv.ParseInt(num, 10, 64); err != nil {
		return "", false
	}
	stream = strings.TrimPrefix(stream, "$$")
	if stream == "" || strings.HasPrefix(stream, "$") {
		return "", false
	}
	return stream, true
}
