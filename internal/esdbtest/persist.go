package esdbtest

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"time"

	"github.com/google/uuid"
)

// The log file is a sequence of frames: u32 body length, body, u32 CRC-32
// (IEEE) of the body. A body is one Record: u64 position, i64 number,
// 16-byte id, i64 created (Unix ns), u8 flags (1 = JSON), then stream, type,
// data and metadata, each as uvarint length + bytes.
//
// Every commit is written with a single write(2) before the append is
// acknowledged. That survives kill -9 of the process (the page cache keeps
// it); it is not fsynced, so a machine crash can lose the tail, which is
// fine for a test server. A torn or corrupt tail frame, which only an
// interrupted write can produce, is cut off at reload.

// logFileName is the log's file name inside --db DIR.
const logFileName = "esdb.log"

// maxFrame bounds a frame's body so that a corrupt length cannot make the
// loader allocate absurd amounts.
const maxFrame = 1 << 30

// logFile appends committed records to the file.
type logFile struct {
	f    *os.File
	w    *bufio.Writer
	body []byte // frame buffer, reused
}

// openLogFile creates dir if needed, replays the existing log through
// index (in position order) and opens the file for appending.
func openLogFile(dir string, index func(*Record)) (*logFile, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create db dir: %w", err)
	}
	path := filepath.Join(dir, logFileName)
	data, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("read log file: %w", err)
	}
	good := 0
	for good < len(data) {
		rec, n, ok := decodeFrame(data[good:])
		if !ok {
			break
		}
		index(rec)
		good += n
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open log file: %w", err)
	}
	// Cut a torn tail so that new frames follow the last good one.
	if err := f.Truncate(int64(good)); err != nil {
		f.Close()
		return nil, fmt.Errorf("truncate torn log tail: %w", err)
	}
	if _, err := f.Seek(int64(good), 0); err != nil {
		f.Close()
		return nil, fmt.Errorf("seek log file: %w", err)
	}
	return &logFile{f: f, w: bufio.NewWriterSize(f, 256<<10)}, nil
}

// write appends the records of one commit and hands them to the kernel.
func (l *logFile) write(recs []*Record) error {
	for _, rec := range recs {
		// One frame in one reused buffer: length, body, CRC.
		b := append(l.body[:0], 0, 0, 0, 0)
		b = encodeRecord(b, rec)
		body := b[4:]
		binary.LittleEndian.PutUint32(b, uint32(len(body)))
		b = binary.LittleEndian.AppendUint32(b, crc32.ChecksumIEEE(body))
		l.body = b
		l.w.Write(b)
	}
	// Flush reports any error of the writes above.
	if err := l.w.Flush(); err != nil {
		return fmt.Errorf("flush log: %w", err)
	}
	return nil
}

func (l *logFile) close() error {
	err := l.w.Flush()
	if cerr := l.f.Close(); err == nil {
		err = cerr
	}
	return err
}

func encodeRecord(b []byte, rec *Record) []byte {
	b = binary.LittleEndian.AppendUint64(b, rec.Position)
	b = binary.LittleEndian.AppendUint64(b, uint64(rec.Number))
	b = append(b, rec.ID[:]...)
	b = binary.LittleEndian.AppendUint64(b, uint64(rec.Created.UnixNano()))
	var flags byte
	if rec.IsJSON {
		flags = 1
	}
	b = append(b, flags)
	b = binary.AppendUvarint(b, uint64(len(rec.Stream)))
	b = append(b, rec.Stream...)
	b = binary.AppendUvarint(b, uint64(len(rec.Type)))
	b = append(b, rec.Type...)
	b = binary.AppendUvarint(b, uint64(len(rec.Data)))
	b = append(b, rec.Data...)
	b = binary.AppendUvarint(b, uint64(len(rec.Metadata)))
	b = append(b, rec.Metadata...)
	return b
}

// decodeFrame parses the frame at the start of data. ok is false for a
// truncated or corrupt frame.
func decodeFrame(data []byte) (rec *Record, n int, ok bool) {
	if len(data) < 8 {
		return nil, 0, false
	}
	size := binary.LittleEndian.Uint32(data)
	if size > maxFrame || uint64(len(data)) < 8+uint64(size) {
		return nil, 0, false
	}
	body := data[4 : 4+size]
	if crc32.ChecksumIEEE(body) != binary.LittleEndian.Uint32(data[4+size:]) {
		return nil, 0, false
	}
	rec, ok = decodeRecord(body)
	return rec, int(8 + size), ok
}

func decodeRecord(b []byte) (*Record, bool) {
	const fixed = 8 + 8 + 16 + 8 + 1
	if len(b) < fixed {
		return nil, false
	}
	rec := &Record{
		Position: binary.LittleEndian.Uint64(b),
		Number:   int64(binary.LittleEndian.Uint64(b[8:])),
		Created:  time.Unix(0, int64(binary.LittleEndian.Uint64(b[32:]))),
		IsJSON:   b[40]&1 != 0,
	}
	rec.ID = uuid.UUID(b[16:32])
	b = b[fixed:]
	var fields [4][]byte
	for i := range fields {
		l, n := binary.Uvarint(b)
		if n <= 0 || uint64(len(b)-n) < l {
			return nil, false
		}
		fields[i] = b[n : n+int(l)]
		b = b[n+int(l):]
	}
	rec.Stream = string(fields[0])
	rec.Type = string(fields[1])
	if len(fields[2]) > 0 {
		rec.Data = fields[2] // the file image outlives the records
	}
	if len(fields[3]) > 0 {
		rec.Metadata = fields[3]
	}
	return rec, true
}
