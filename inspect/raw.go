package inspect

import (
	"errors"
	"io"
	"os"
	"syscall"
)

// Raw images are the guest disk itself. qemu presents a raw file rounded up to whole
// 512-byte sectors (the tail reads as zeros), and so does glimpse, so that conversions agree
// byte for byte.

// RawInfo is the format-specific detail of a raw image: its partition table, if any.
type RawInfo struct {
	PartitionTable *PartitionTable `json:"partition-table,omitempty"`
}

type rawCore struct {
	r        io.ReaderAt
	fileSize int64
	virtual  int64
	file     *os.File // set when r is a plain file: holes come from SEEK_DATA/SEEK_HOLE
	pt       *PartitionTable
	finds    []Finding
}

func openRaw(o *opener) (core, error) {
	c := &rawCore{r: o.r, fileSize: o.size, virtual: alignUp(o.size, 512)}
	if f, ok := o.r.(*os.File); ok {
		c.file = f
	}
	pt, finds, err := parsePartitions(o)
	if err != nil {
		return nil, err
	}
	c.pt, c.finds = pt, finds
	return c, nil
}

func (c *rawCore) size() int64 { return c.virtual }

func (c *rawCore) describe(info *Info) {
	if c.pt != nil {
		info.FormatSpecific = &FormatSpecific{Type: Raw, Data: RawInfo{PartitionTable: c.pt}}
	}
}

func (c *rawCore) findings() []Finding { return c.finds }

func (c *rawCore) lookup(off int64) (segment, error) {
	if off >= c.fileSize { // the sector-rounding tail
		return segment{kind: KindZero, length: c.virtual - off, host: -1}, nil
	}
	rest := c.fileSize - off
	if c.file != nil {
		if data, hole, ok := seekDataHole(c.file, off); ok {
			if data > off {
				return segment{kind: KindZero, length: min(data, c.fileSize) - off, host: -1}, nil
			}
			if hole > off {
				rest = min(hole, c.fileSize) - off
			}
		}
	}
	return segment{kind: KindData, length: rest, r: c.r, off: off, host: off}, nil
}

// seekDataHole returns the next data offset at or after off and, when off is in data, the
// end of that data. ok is false when the file system cannot say (then everything is data).
func seekDataHole(f *os.File, off int64) (data, hole int64, ok bool) {
	const seekData, seekHole = 3, 4 // SEEK_DATA, SEEK_HOLE (Linux, FreeBSD, macOS, Solaris)
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, 0, false
	}
	var serr error
	cerr := rc.Control(func(fd uintptr) {
		data, serr = syscall.Seek(int(fd), off, seekData)
		if serr != nil {
			return
		}
		if data == off {
			hole, serr = syscall.Seek(int(fd), off, seekHole)
		}
	})
	if cerr != nil {
		return 0, 0, false
	}
	if errors.Is(serr, syscall.ENXIO) { // no data at or after off: a hole to the end
		st, err := f.Stat()
		if err != nil {
			return 0, 0, false
		}
		return st.Size(), 0, true
	}
	if serr != nil {
		return 0, 0, false
	}
	return data, hole, true
}
