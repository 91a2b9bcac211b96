package writeback

import (
	"errors"
	"os"
	"syscall"
	"unsafe"
)

// DirectAlign is the alignment Direct needs of a write's buffer, length and file offset to
// send it past the page cache: the largest logical block size of common disks.
const DirectAlign = 4096

// Direct writes a file front to back past the page cache where it can (O_DIRECT), for data
// that is fsynced before anyone reads it, where copying it into the page cache is pure cost:
// on the benchmark VM that copy took as much CPU as the upload's MD5. A write that is not
// aligned (the last piece of a file, as a rule), a file system that refuses O_DIRECT, or a
// platform without it make Direct fall back to ordinary writes for the rest of the file.
type Direct struct {
	f      *os.File
	direct bool
	off    int64
}

// NewDirect starts writing f at its current offset, which must be 0.
func NewDirect(f *os.File) *Direct {
	return &Direct{f: f, direct: setDirect(f, true)}
}

// Bypassing reports whether the writes so far have bypassed the page cache.
func (d *Direct) Bypassing() bool { return d.direct }

// Write writes b at the end of what was written so far.
func (d *Direct) Write(b []byte) (int, error) {
	if d.direct && (len(b)%DirectAlign != 0 || d.off%DirectAlign != 0 || !Aligned(b)) {
		d.buffered()
	}
	if d.direct {
		n, err := d.f.Write(b)
		d.off += int64(n)
		if err == nil || n != 0 || !errors.Is(err, syscall.EINVAL) {
			return n, err
		}
		// Accepted at open, refused at write (some file systems): write it the usual way.
		d.buffered()
	}
	n, err := Write(d.f, b)
	d.off += int64(n)
	return n, err
}

func (d *Direct) buffered() {
	setDirect(d.f, false)
	d.direct = false
}

// AlignedBuffer returns n bytes whose first byte is DirectAlign-aligned.
func AlignedBuffer(n int) []byte {
	b := make([]byte, n+DirectAlign)
	skip := 0
	if r := int(uintptr(unsafe.Pointer(unsafe.SliceData(b))) % DirectAlign); r != 0 {
		skip = DirectAlign - r
	}
	return b[skip : skip+n : skip+n]
}

// Aligned reports whether b starts on a DirectAlign boundary.
func Aligned(b []byte) bool {
	return len(b) == 0 || uintptr(unsafe.Pointer(unsafe.SliceData(b)))%DirectAlign == 0
}
