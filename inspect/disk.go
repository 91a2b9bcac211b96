package inspect

import (
	"errors"
	"fmt"
	"io"
	"sync"
)

// core is what one format supplies. disk derives the whole Image from it (the partial
// pattern of go-containerregistry): ReadAt, merged Extent, and the JSON Info are written
// once, here, for every format.
type core interface {
	// size is the virtual size in bytes.
	size() int64
	// describe fills the Info fields beyond Filename, Format and VirtualSize.
	describe(info *Info)
	// findings are the format's own safety findings, computed at open.
	findings() []Finding
	// lookup maps the guest offset off (0 <= off < size) to the run that begins there. The
	// run may be shorter than the structure that describes it, never empty, and may end
	// anywhere up to size. It fails with ErrUnsupported (wrapped) when the format can be
	// described but not read, and with ErrNotAllowed when reading needs a file the caller
	// did not allow.
	lookup(off int64) (segment, error)
}

// checker is implemented by cores that have a structure to check (qemu-img check).
type checker interface {
	check(r *Report)
}

// segment is one run of guest data as a format stores it.
type segment struct {
	kind   Kind
	length int64
	// r and off give the run's bytes for KindData and KindCompressed: guest byte i of the
	// run is r's byte off+i. r is the image file, an extent, a data file, a backing image,
	// or a decompressing reader.
	r   io.ReaderAt
	off int64
	// host is the file offset reported by Extent (KindData in a plain file); -1 otherwise.
	host  int64
	depth int
}

// closer is implemented by cores that hold resources.
type closer interface{ close() error }

// disk is the Image every format's core becomes.
type disk struct {
	format   Format
	name     string
	c        core
	info     Info
	findings []Finding
	closers  []io.Closer

	closeOnce sync.Once
	closeErr  error
}

var _ Image = (*disk)(nil)

func (d *disk) Info() Info {
	i := d.info
	i.Safety = d.Safety()
	return i
}

func (d *disk) Size() int64 { return d.info.VirtualSize }

func (d *disk) Safety() []Finding {
	out := make([]Finding, len(d.findings))
	copy(out, d.findings)
	return out
}

func (d *disk) Check() Report {
	r := Report{Filename: d.name, Format: d.format}
	if ck, ok := d.c.(checker); ok {
		r.Supported = true
		ck.check(&r)
	}
	return r
}

func (d *disk) Close() error {
	d.closeOnce.Do(func() {
		if cl, ok := d.c.(closer); ok {
			d.closeErr = cl.close()
		}
		for i := len(d.closers) - 1; i >= 0; i-- {
			if err := d.closers[i].Close(); err != nil && d.closeErr == nil {
				d.closeErr = err
			}
		}
	})
	return d.closeErr
}

// lookup checks the core's answer so that a broken format can never make ReadAt loop or
// read outside the request.
func (d *disk) lookup(off int64) (segment, error) {
	s, err := d.c.lookup(off)
	if err != nil {
		return segment{}, nameErrors(err, d.name)
	}
	if s.length <= 0 {
		return segment{}, fmt.Errorf("%s: internal error: %s lookup at %d returned an empty run", d.name, d.format, off)
	}
	if rem := d.info.VirtualSize - off; s.length > rem {
		s.length = rem
	}
	if (s.kind == KindData || s.kind == KindCompressed) && s.r == nil {
		return segment{}, fmt.Errorf("%s: internal error: %s lookup at %d returned data without a reader", d.name, d.format, off)
	}
	if s.kind != KindData {
		s.host = -1
	}
	return s, nil
}

// ReadAt reads guest bytes. Like any io.ReaderAt it returns io.EOF when the request runs
// past the virtual size. Stored data that lies past the end of its file reads as zeros, as
// qemu reads it (Check and Safety report the image as broken).
func (d *disk) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("%s: negative offset %d", d.name, off)
	}
	size := d.info.VirtualSize
	if off >= size {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	var tailErr error
	if int64(len(p)) > size-off {
		p = p[:size-off]
		tailErr = io.EOF
	}
	n := 0
	for n < len(p) {
		pos := off + int64(n)
		s, err := d.lookup(pos)
		if err != nil {
			return n, err
		}
		chunk := p[n:]
		if int64(len(chunk)) > s.length {
			chunk = chunk[:s.length]
		}
		switch s.kind {
		case KindZero, KindHole:
			clear(chunk)
		default:
			got, err := s.r.ReadAt(chunk, s.off)
			if got < len(chunk) {
				if err != nil && !errors.Is(err, io.EOF) {
					return n + got, nameErrors(err, d.name)
				}
				clear(chunk[got:])
			}
		}
		n += len(chunk)
	}
	return n, tailErr
}

// maxExtentMerge bounds the lookups one Extent call merges. Formats return runs as long as
// their tables allow, but a hostile file can make every run short (a huge disk whose tables
// are all unreadable); the caller then simply asks again from where the extent ended.
const maxExtentMerge = 1 << 16

// Extent returns the run of one kind that begins at off, at most n bytes long (n <= 0 means
// to the end of the disk). Consecutive runs merge when they have the same kind and depth,
// and, for data, when they are contiguous in the same file.
func (d *disk) Extent(off, n int64) (Extent, error) {
	size := d.info.VirtualSize
	if off < 0 || off >= size {
		return Extent{}, fmt.Errorf("%s: extent offset %d outside the disk (size %d)", d.name, off, size)
	}
	end := size
	if n > 0 && n < size-off {
		end = off + n
	}
	s, err := d.lookup(off)
	if err != nil {
		return Extent{}, err
	}
	e := Extent{Start: off, Length: min(s.length, end-off), Kind: s.kind, Depth: s.depth, Offset: s.host}
	for merged := 1; e.End() < end && merged < maxExtentMerge; merged++ {
		next, err := d.lookup(e.End())
		if err != nil {
			break // the caller hits the error when it reaches this offset
		}
		if next.kind != e.Kind || next.depth != e.Depth {
			break
		}
		if e.Kind == KindData {
			if next.r != s.r || next.host < 0 || e.Offset < 0 || next.host != e.Offset+e.Length {
				break
			}
		}
		e.Length += min(next.length, end-e.End())
	}
	return e, nil
}
