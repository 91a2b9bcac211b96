package convert

import (
	"crypto/rand"
	"crypto/sha1"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// Helpers shared by the vhd, vhdx and vdi writers (prefix vx): the output file, UUIDs and
// timestamps given as options, and tables written to the file a page at a time.

// vxCreate opens the output of a vhd, vhdx or vdi writer: a RawFile (temporary file beside
// the destination, renamed in Commit, removed by Abort). These formats put tables at the
// start of the file that are only known at the end, so they cannot go to standard output.
func vxCreate(format, name string, sync bool) (*RawFile, error) {
	if name == "-" {
		return nil, fmt.Errorf("%s cannot be written to standard output: its tables are written at the end, so it needs a file", format)
	}
	rf, err := CreateRaw(name, RawOptions{Sync: sync})
	if err != nil {
		return nil, err
	}
	// Every write goes through the RawFile's bounds check; the real size is set in Commit.
	rf.Begin(1<<63 - 1)
	return rf, nil
}

// vxWriteAt writes b at the file offset off of rf (errors name the output and say when the
// disk is full).
func vxWriteAt(rf *RawFile, b []byte, off int64) error {
	if len(b) == 0 {
		return nil
	}
	return rf.Write(&Chunk{Off: off, Len: int64(len(b)), Data: b})
}

// vxWriteSparse writes b at off, leaving out the 4 KiB pages (of b) that are all zeros:
// the file is new, so they read as zeros already, and stay holes.
func vxWriteSparse(rf *RawFile, b []byte, off int64) error {
	const page = 4 << 10
	for start := 0; start < len(b); {
		if isZero(b[start:min(start+page, len(b))]) {
			start += page
			continue
		}
		end := start + page
		for end < len(b) && !isZero(b[end:min(end+page, len(b))]) {
			end += page
		}
		end = min(end, len(b))
		if err := vxWriteAt(rf, b[start:end], off+int64(start)); err != nil {
			return err
		}
		start = end
	}
	return nil
}

// vxCommit sets the file's size and renames it into place.
func vxCommit(rf *RawFile, size int64) error {
	rf.Begin(size)
	return rf.Commit()
}

// vxCheckChunk verifies what an Ordered writer relies on: chunks in order, without gaps,
// inside the disk, data of the right length.
func vxCheckChunk(name string, c *Chunk, pos, size int64) error {
	switch {
	case c.Off != pos:
		return fmt.Errorf("%s: internal error: %v arrives at guest offset %d", name, c, pos)
	case c.Len <= 0 || c.Off+c.Len > size:
		return fmt.Errorf("%s: internal error: %v outside the disk (%d bytes)", name, c, size)
	case !c.Zero() && int64(len(c.Data)) != c.Len:
		return fmt.Errorf("%s: internal error: %v carries %d bytes", name, c, len(c.Data))
	}
	return nil
}

// vxCheckPositional verifies a chunk of a positional writer: inside the disk, data of the
// right length.
func vxCheckPositional(name string, c *Chunk, size int64) error {
	switch {
	case c.Off < 0 || c.Len <= 0 || c.Off+c.Len > size:
		return fmt.Errorf("%s: internal error: %v outside the disk (%d bytes)", name, c, size)
	case !c.Zero() && int64(len(c.Data)) != c.Len:
		return fmt.Errorf("%s: internal error: %v carries %d bytes", name, c, len(c.Data))
	}
	return nil
}

// vxParseUUID reads a UUID as 8-4-4-4-12 hex digits (or 32 without dashes), in the order
// it is printed (RFC 9562 byte order).
func vxParseUUID(v string) ([16]byte, error) {
	var u [16]byte
	s := v
	if len(s) == 36 && s[8] == '-' && s[13] == '-' && s[18] == '-' && s[23] == '-' {
		s = s[:8] + s[9:13] + s[14:18] + s[19:23] + s[24:]
	}
	if len(s) != 32 {
		return u, errors.New("want a UUID (8-4-4-4-12 hex digits)")
	}
	if _, err := hex.Decode(u[:], []byte(s)); err != nil {
		return u, errors.New("want a UUID (8-4-4-4-12 hex digits)")
	}
	return u, nil
}

// vxRandomUUID is a random (version 4) UUID.
func vxRandomUUID() ([16]byte, error) {
	var u [16]byte
	if _, err := rand.Read(u[:]); err != nil {
		return u, err
	}
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return u, nil
}

// vxNameUUID is the name-based (version 5, SHA-1) UUID of name in the namespace ns (RFC
// 9562 section 5.5): the writers derive their secondary UUIDs from the one given with
// uuid=, so that one option makes the whole output reproducible.
func vxNameUUID(ns [16]byte, name string) [16]byte {
	h := sha1.New()
	h.Write(ns[:])
	h.Write([]byte(name))
	var u [16]byte
	copy(u[:], h.Sum(nil))
	u[6] = u[6]&0x0f | 0x50
	u[8] = u[8]&0x3f | 0x80
	return u
}

// vxMixedEndian converts a UUID from its printed (RFC) byte order into the layout
// Microsoft's GUID and VirtualBox's RTUUID store: the first three fields little-endian.
func vxMixedEndian(u [16]byte) [16]byte {
	var g [16]byte
	binary.LittleEndian.PutUint32(g[0:], binary.BigEndian.Uint32(u[0:]))
	binary.LittleEndian.PutUint16(g[4:], binary.BigEndian.Uint16(u[4:]))
	binary.LittleEndian.PutUint16(g[6:], binary.BigEndian.Uint16(u[6:]))
	copy(g[8:], u[8:])
	return g
}

// vxUUIDOption reads key (a UUID) or makes a random one.
func vxUUIDOption(o FormatOptions, used map[string]bool, format, key string) (u [16]byte, given bool, err error) {
	if v, ok := o.take(used, key); ok {
		u, err = vxParseUUID(v)
		if err != nil {
			return u, true, fmt.Errorf("%s: -o %s=%s: %v", format, key, v, err)
		}
		if u == ([16]byte{}) {
			// VirtualBox refuses an image whose UUID is null, and an identity shared by
			// every such disk identifies nothing.
			return u, true, fmt.Errorf("%s: -o %s=%s: the null UUID is not an identity; give another", format, key, v)
		}
		return u, true, nil
	}
	u, err = vxRandomUUID()
	return u, false, err
}

// vxParseTime reads a timestamp as Unix seconds (as SOURCE_DATE_EPOCH spells it) or in
// RFC 3339.
func vxParseTime(v string) (time.Time, error) {
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		return time.Unix(n, 0).UTC(), nil
	}
	t, err := time.Parse(time.RFC3339, v)
	if err != nil {
		return time.Time{}, errors.New("want Unix seconds or an RFC 3339 time (2024-01-31T12:00:00Z)")
	}
	return t.UTC(), nil
}

// vxPageBytes is how much of a table vxTable holds and writes at once.
const vxPageBytes = 64 << 10

// vxTable writes a table of fixed-width entries (a BAT, a block map) that is filled in in
// entry order, a page at a time, so that its memory is one page whatever the disk's size.
// Entries never set take def(i); pages that are all zero bytes are not written (the file
// is new: they read as zeros already).
type vxTable struct {
	rf    *RawFile
	off   int64 // file offset of entry 0
	n     int64 // entries
	width int64 // bytes per entry: 4 or 8
	put   func(b []byte, v uint64)
	def   func(i int64) uint64
	buf   []byte
	page  int64 // the page in buf, -1 before the first
	done  int64 // pages before done are written
}

func newVXTable(rf *RawFile, off, n, width int64, order binary.ByteOrder, def func(int64) uint64) *vxTable {
	t := &vxTable{rf: rf, off: off, n: n, width: width, def: def, page: -1}
	if width == 4 {
		t.put = func(b []byte, v uint64) { order.PutUint32(b, uint32(v)) }
	} else {
		t.put = func(b []byte, v uint64) { order.PutUint64(b, v) }
	}
	return t
}

func (t *vxTable) perPage() int64 { return vxPageBytes / t.width }

func (t *vxTable) pages() int64 { return (t.n + t.perPage() - 1) / t.perPage() }

// fill loads page p into buf with every entry at its default.
func (t *vxTable) fill(p int64) {
	first := p * t.perPage()
	cnt := min(t.perPage(), t.n-first)
	if t.buf == nil {
		t.buf = make([]byte, vxPageBytes)
	}
	t.buf = t.buf[:cnt*t.width]
	for i := range cnt {
		t.put(t.buf[i*t.width:], t.def(first+i))
	}
	t.page = p
}

// flush writes the page in buf (unless it is all zeros).
func (t *vxTable) flush() error {
	if t.page < 0 {
		return nil
	}
	if !isZero(t.buf) {
		if err := vxWriteAt(t.rf, t.buf, t.off+t.page*vxPageBytes); err != nil {
			return err
		}
	}
	t.done = t.page + 1
	t.page = -1
	return nil
}

// set gives entry i the value v. Entries must be set in increasing page order.
func (t *vxTable) set(i int64, v uint64) error {
	if i < 0 || i >= t.n {
		return fmt.Errorf("%s: internal error: table entry %d of %d", t.rf.Name(), i, t.n)
	}
	p := i / t.perPage()
	if p != t.page {
		if p < t.done || p < t.page {
			return fmt.Errorf("%s: internal error: table entry %d set after its page was written", t.rf.Name(), i)
		}
		if err := t.through(p); err != nil {
			return err
		}
		t.fill(p)
	}
	t.put(t.buf[(i%t.perPage())*t.width:], v)
	return nil
}

// through writes the page in buf and every page before p not yet written.
func (t *vxTable) through(p int64) error {
	if err := t.flush(); err != nil {
		return err
	}
	for ; t.done < p; t.done++ {
		t.fill(t.done)
		if !isZero(t.buf) {
			if err := vxWriteAt(t.rf, t.buf, t.off+t.done*vxPageBytes); err != nil {
				return err
			}
		}
		t.page = -1
	}
	return nil
}

// finish writes every page not yet written.
func (t *vxTable) finish() error { return t.through(t.pages()) }
